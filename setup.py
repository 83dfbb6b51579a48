"""Lists every package under the fixed top-level directories as crishim.<dir>.

pyproject.toml maps crishim.runtime -> runtime/ (and so on); setuptools still
needs each subpackage named, which this walk provides without a hand-kept list.
"""

from pathlib import Path

from setuptools import setup

TOP_LEVEL = ("runtime", "cri_api", "oci", "cgroups", "images")


def crishim_packages() -> list[str]:
    found = []
    for top in TOP_LEVEL:
        for init in sorted(Path(top).rglob("__init__.py")):
            found.append("crishim." + ".".join(init.parent.parts))
    return found


setup(
    packages=crishim_packages(),
    package_data={
        "crishim.cri_api": ["*.proto"],
        "crishim.oci": ["*.json"],
        "crishim.runtime": ["*.service", "*.toml", "*.conflist"],
    },
)
