"""Pod networking: pinned network namespaces, the CNI runner, DNS and hostname files.

Plain values in and out (no protobuf); errors are the classes in `errors.py`.
"""
