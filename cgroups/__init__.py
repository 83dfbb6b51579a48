"""crishim.cgroups"""
