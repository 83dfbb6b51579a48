"""crishim.cri_api"""
