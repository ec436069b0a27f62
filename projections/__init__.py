"""The read side: cost, accuracy, lineage and audit views rebuilt from the event stream.

Each view is an eventsourcing ``Projection`` whose tracking recorder holds the view's
tables; rows and the tracking position are written in one transaction per batch.
"""
