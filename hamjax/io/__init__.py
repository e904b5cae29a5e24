"""Reading and writing Hamiltonians: CP2K CSR files and logs, the hamjax dataset format (npz)."""

from hamjax.io import dataset
from hamjax.io.cp2k import read_cp2k, read_csr, write_cp2k, write_csr
from hamjax.io.cp2k_log import Cp2kLog, parse_cp2k_log

__all__ = [
    "Cp2kLog",
    "dataset",
    "parse_cp2k_log",
    "read_cp2k",
    "read_csr",
    "write_cp2k",
    "write_csr",
]
