"""Before any trial: does every node of the Ray cluster reach the study's location?

Since Ray 2.7, Tune keeps trial checkpoints only under ``RunConfig(storage_path)``, so a node
that cannot read and write the location fails each trial at its first checkpoint ("2 trials:
2 errored"). Here the driver writes a marker (a hidden file, removed again), and one tiny Ray
task per alive node reads it back and writes one of its own: a node without the disk, the
mount, or the credentials is named in one line before anything of the study is written.
"""

from __future__ import annotations

import uuid

from study.location import Location
from trainer.config import ConfigError

PROBE_TIMEOUT_S = 60.0


def probe(marker: Location, token: str) -> str | None:
    """On one node: None if it reads ``marker`` (holding ``token``) and can write beside it, else why not."""
    try:
        if marker.read_text() != token:
            return f"{marker} holds something else here (another disk at the same path)"
        own = marker.parent / f"{marker.name}-{uuid.uuid4().hex[:8]}"
        own.write_text(token)
        own.delete()
    except ConfigError as err:
        return str(err)
    except Exception as err:  # noqa: BLE001 - a missing file, a refused request: reported, not raised
        return f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    return None


def _marker_folder(root: Location) -> Location:
    """Where the marker goes: ``root`` itself, or locally its nearest existing ancestor (a new
    ``--dir`` is not created for a check that may fail)."""
    if not root.local:
        return root
    folder = root.path.absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return Location(str(folder))


def check_nodes_reach(root: Location) -> None:
    """ConfigError naming the nodes that cannot read and write ``root`` (only on clusters of 2+ nodes)."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = [n for n in ray.nodes() if n["Alive"]]
    if len(nodes) < 2:
        return  # the driver's own node: it has read and written the location already
    token = uuid.uuid4().hex
    marker = _marker_folder(root) / f".semiseg-reach-{token[:12]}"
    try:
        marker.write_text(token)
    except (OSError, ConfigError) as err:
        raise ConfigError(f"--dir {root}: this driver cannot write there ({err})") from None
    try:
        task = ray.remote(probe)
        refs = [task.options(num_cpus=0, max_retries=0,
                             scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(marker, token) for n in nodes]
        try:
            answers = ray.get(refs, timeout=PROBE_TIMEOUT_S)
        except Exception as err:  # noqa: BLE001 - a node that cannot even run the task
            answers = [f"the check did not return ({type(err).__name__})"] * len(nodes)
    finally:
        marker.delete()
    failed = [(n["NodeManagerAddress"], n["NodeID"][:8], why) for n, why in zip(nodes, answers) if why]
    if not failed:
        return
    names = ", ".join(f"{address} (node {node_id})" for address, node_id, _ in failed)
    what = "a local path that" if root.local else "a location that"
    instead = ("use a path every node mounts at the same place (NFS) or an object store every node reaches "
               "(--dir s3://bucket/prefix)" if root.local else
               "give those nodes the credentials and network to reach it (their environment, credential files "
               "or instance role; see docs/clusters.md, Credentials)")
    raise ConfigError(f"--dir {root}: {what} {len(failed)} of {len(nodes)} Ray nodes cannot read and write: "
                      f"{names} ({failed[0][2]}); {instead}")
