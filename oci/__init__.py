"""crishim.oci"""
