"""Which image set serves which runtime handler (KEP-4216, `[runtimes.NAME] separate_images`).

A handler with `separate_images = true` pulls, lists and removes images in a
set of its own, named after it; every other handler shares the set ''. The
empty handler name (the kubelet's "default runtime class") maps to the set of
the default handler. crishim.images.store.ImageStore takes the resulting map as
`image_sets` and answers `image_set(handler)` from it.
"""

from __future__ import annotations

from crishim.runtime.config import Config

SHARED_SET = ""


def handler_image_sets(config: Config, default_handler: str) -> dict[str, str]:
    """handler name -> image set name, including '' for the default handler."""
    sets = {name: (name if handler.separate_images else SHARED_SET) for name, handler in config.runtimes.items()}
    sets[""] = sets.get(default_handler, SHARED_SET)
    return sets
