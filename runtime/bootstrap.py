"""Builds the daemon's Services from the config: directories, stores, runtimes, network."""

from __future__ import annotations

import asyncio
import logging
import shutil
from pathlib import Path
from typing import Any

from crishim.cgroups import detect
from crishim.cgroups.oomkills import OomKillLog
from crishim.cgroups.stats import StatsSampler
from crishim.images.policy import PolicyInvalid, PolicySet
from crishim.images.store import ImageStore
from crishim.oci.apparmor_profile import ensure_default_profile
from crishim.oci.features import RuntimeFeatures
from crishim.oci.runtime import OciRuntime, become_subreaper
from crishim.runtime.config import Config
from crishim.runtime.container.monitor import ExitMonitor
from crishim.runtime.errors import FailedPrecondition
from crishim.runtime.image_sets import handler_image_sets
from crishim.runtime.network.manager import PodNetwork
from crishim.runtime.services import Handler, Services
from crishim.runtime.state.store import StateStore

log = logging.getLogger("crishim.bootstrap")

FEATURE_PROBE_SECONDS = 20.0


async def probe_handlers(config: Config, driver: str = "cgroupfs") -> dict[str, Handler]:
    """Each handler's real features, probed side by side; a broken handler is left out."""

    async def probe(name: str) -> Handler | None:
        handler_config = config.runtimes[name]
        # conmon needs an absolute path to the runtime binary.
        path = shutil.which(handler_config.path) or handler_config.path
        runtime = OciRuntime(
            name,
            path,
            config.handler_root(name),
            handler_config.type,  # type: ignore[arg-type]
            systemd_cgroup=driver == "systemd",
            probe_dir=Path(config.root) / "probes",
        )
        try:
            features = await asyncio.wait_for(runtime.features(), FEATURE_PROBE_SECONDS)
        except TimeoutError:
            log.warning("probing runtime handler %s took over %ss; assuming no rro/idmap", name, FEATURE_PROBE_SECONDS)
            features = RuntimeFeatures()
        except Exception as exc:  # noqa: BLE001 - a broken handler must not stop the others
            log.warning("runtime handler %s unusable: %s", name, exc)
            return None
        return Handler(name=name, runtime=runtime, features=features)

    probed = await asyncio.gather(*(probe(name) for name in config.runtimes))
    return {h.name: h for h in probed if h is not None}


def choose_default_handler(config: Config, handlers: dict[str, Handler]) -> str:
    """The configured default_runtime; unset, crun where it probed fully, else runc.

    Like CRI-O we prefer crun: on a node where it does user namespaces, idmapped and
    recursive read-only mounts, a pod asking for no runtime class gets all of them.
    """
    if config.default_runtime:
        return config.default_runtime
    crun = handlers.get("crun")
    if (
        crun is not None
        and crun.features.user_namespaces
        and crun.features.idmap_mounts
        and (crun.features.recursive_read_only)
    ):
        chosen = "crun"
    elif "runc" in handlers or not handlers:
        chosen = "runc"
    else:
        chosen = sorted(handlers)[0]
    log.info("default runtime handler: %s", chosen)
    return chosen


async def ensure_pause_image(images: ImageStore, wanted: str) -> None:
    """The built-in pause image is made from catatonit on first start; never pulled.

    A child process makes it (runtime/pause_import.py), so the daemon keeps none of
    that one-off work's memory."""
    from crishim.images.errors import NotFound as ImageNotFound
    from crishim.images.pause import PAUSE_IMAGE
    from crishim.runtime.pause_import import import_pause_image

    if wanted and wanted != PAUSE_IMAGE:
        return  # a configured registry image is pulled on first use
    try:
        images.resolve(PAUSE_IMAGE)
    except ImageNotFound:  # absent: build it; any other failure stops start-up
        await import_pause_image(images.root)
        images.resolve(PAUSE_IMAGE)  # the child's import, seen through our own store
        log.info("built-in pause image %s created from catatonit", PAUSE_IMAGE)
    images.set_pinned(PAUSE_IMAGE, True)


def image_policies(config: Config) -> PolicySet:
    """The image trust policies, every file parsed now: a broken one stops the start-up."""
    policies = PolicySet.from_settings(config.image_policy, config.image_policy_dir)
    try:
        for policy in policies.load_all():
            log.info("image policy %s loaded", policy.source)
    except PolicyInvalid as exc:
        raise FailedPrecondition(f"cannot start: {exc}") from exc
    return policies


async def build_services(config: Config) -> Services:
    from crishim.runtime.recover import on_object_exit, reconcile

    policies = image_policies(config)  # before the slow probes: a broken policy fails at once
    for d in (Path(config.root), Path(config.state_dir), config.exits_dir, config.attach_dir, config.netns_dir):
        d.mkdir(parents=True, exist_ok=True)
    # Traversable (not listable) by the mapped roots of user-namespaced pods.
    for d in (Path(config.root), Path(config.root) / "sandboxes", Path(config.root) / "containers"):
        d.mkdir(parents=True, exist_ok=True)
        d.chmod(0o711)
    become_subreaper()
    driver = config.cgroup_driver or detect.default_driver()
    if "crun" in config.runtimes and detect.hybrid_blocks_crun():
        log.warning("cgroup v2 holds controllers beside v1 ones: crun will refuse to run; run 'crishim doctor --fix'")
    # The default AppArmor profile loads while the handlers are probed; a failure only
    # refuses runtime/default containers later, naming the cause.
    handlers, _ = await asyncio.gather(probe_handlers(config, driver), ensure_default_profile(Path(config.state_dir)))
    default_handler = choose_default_handler(config, handlers)
    state = StateStore(config.db_path)
    images = ImageStore(
        config.image_store_path,
        Path(config.registries.config_path) if config.registries.config_path else None,
        max_parallel_layers=config.download_limit,
        pull_progress_timeout=config.image_pull_progress_timeout,
        image_sets=handler_image_sets(config, default_handler),
        policies=policies,
        priority_namespaces=config.images.priority_namespaces,
    )
    await ensure_pause_image(images, config.sandbox_image)
    pod_cidr = state.get_setting("pod_cidr") or config.cni.pod_cidr
    network = PodNetwork(
        config.cni.conf_dir,
        config.cni.bin_dirs,
        str(config.cni_cache_dir),
        str(config.netns_dir),
        config.cni.plugin_timeout,
        pod_cidr=pod_cidr,
        install_default=config.cni.install_default,
    )
    await network.start()
    svc = Services(
        config=config, state=state, images=images, network=network, handlers=handlers, cgroup_driver=driver,
        default_handler=default_handler,
    )  # fmt: skip

    async def on_exit(object_id: str) -> None:
        await on_object_exit(svc, object_id)

    svc.monitor = ExitMonitor(on_exit)
    if config.drop_infra_container:
        from crishim.runtime.sandbox import pidholder

        svc.pid_holder = await asyncio.to_thread(pidholder.prepare, config.pid_holder_dir)
    svc.stats = StatsSampler()
    svc.oom_log = OomKillLog.open()
    svc.streaming = await _start_streaming(svc)
    svc.stop_metrics = _start_metrics(svc)
    await reconcile(svc)
    _start_prefetch(config, images)
    return svc


def _start_prefetch(config: Config, images: ImageStore) -> None:
    """In the background: neither the start-up nor any CRI call waits for pre-fetch pulls."""
    from crishim.images.pause import PAUSE_IMAGE

    keep_pinned = [config.sandbox_image or PAUSE_IMAGE]  # a pre-fetch list never unpins the pause image
    images.start_prefetch(config.images.prefetch, config.images.refresh_interval, keep_pinned)


async def _start_streaming(svc: Services) -> Any:
    from crishim.runtime.streaming.server import StreamingServer
    from crishim.runtime.streaming_backend import RuntimeStreamBackend

    cfg = svc.config.streaming
    server = StreamingServer(
        cfg.address,
        RuntimeStreamBackend(svc),
        tls_cert=cfg.tls_cert or None,
        tls_key=cfg.tls_key or None,
        token_ttl=cfg.token_ttl,
    )
    await server.start()
    return server


def _start_metrics(svc: Services) -> Any:
    if not svc.config.metrics.address:
        return None
    from crishim.runtime import boundary, metrics

    boundary.add_call_observer(metrics.observe_cri_call)
    metrics.set_state_collector(lambda: _objects_by_state(svc))
    metrics.set_pull_verdict_collector(lambda: svc.images.verdict_counts)
    return metrics.start_metrics_server(svc.config.metrics.address)


def _objects_by_state(svc: Services) -> dict[str, dict[str, int]]:
    """Containers and sandboxes by state for /metrics (count_states is safe from its thread)."""
    return {
        "containers": {state.lower(): n for state, n in svc.state.containers.count_states().items()},
        "sandboxes": {state.lower(): n for state, n in svc.state.sandboxes.count_states().items()},
    }
