"""crishim.images"""
