"""Per-subject encryption of personal data, and its erasure by destroying keys.

See docs/privacy.md. :mod:`ledger.privacy.master` loads the master key,
:mod:`ledger.privacy.keystore` keeps the subject keys in the ledger's database, and
:mod:`ledger.privacy.mapper` encrypts the personal fields of a subject's events.
"""

from ledger.privacy.keystore import SubjectKeys, SubjectStatus
from ledger.privacy.mapper import ERASED, PrivacyMapper, is_erased
from ledger.privacy.master import MasterKey, generate_master_key, load_master_key

__all__ = [
    "ERASED",
    "MasterKey",
    "PrivacyMapper",
    "SubjectKeys",
    "SubjectStatus",
    "generate_master_key",
    "is_erased",
    "load_master_key",
]
