"""crishim.runtime"""
