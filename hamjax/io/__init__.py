"""Reading and writing Hamiltonians: CP2K CSR files and the hamjax dataset format."""

from hamjax.io.cp2k import parse_cp2k_log, read_cp2k, read_csr, write_cp2k, write_csr

__all__ = ["parse_cp2k_log", "read_cp2k", "read_csr", "write_cp2k", "write_csr"]
