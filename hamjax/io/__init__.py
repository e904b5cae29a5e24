"""Reading and writing Hamiltonians: CP2K CSR files and the hamjax dataset format (npz)."""

from hamjax.io import dataset
from hamjax.io.cp2k import parse_cp2k_log, read_cp2k, read_csr, write_cp2k, write_csr

__all__ = ["dataset", "parse_cp2k_log", "read_cp2k", "read_csr", "write_cp2k", "write_csr"]
