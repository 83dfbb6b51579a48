"""KEP-4639: an image volume is read-only, and a request that says otherwise is refused."""

from __future__ import annotations

import pytest
from crishim.cri_api import api_pb2 as pb
from crishim.runtime import validate
from crishim.runtime.errors import InvalidArgument


def test_image_volume_with_readonly_false_is_refused_naming_the_field() -> None:
    mount = pb.Mount(container_path="/mnt/vol", image=pb.ImageSpec(image="busybox:1"))
    with pytest.raises(InvalidArgument) as refused:
        validate.image_volume(mount, "config.mounts[2]")
    assert str(refused.value) == (
        "config.mounts[2].readonly is false for the image volume 'busybox:1' at '/mnt/vol': "
        "image volumes are read-only; set readonly=true"
    )


def test_read_only_image_volume_passes() -> None:
    validate.image_volume(pb.Mount(container_path="/v", readonly=True, image=pb.ImageSpec(image="x")), "m")
