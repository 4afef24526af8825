"""Worker pools: one Deployment, Service, PDB and network policy per pool, one router."""

from __future__ import annotations

from chart_helpers import EDIT_POOL, Objects, container, env_of, find
from render_k8s_base import RELEASE

WORKER = f"{RELEASE}-worker"
EDIT = f"{RELEASE}-worker-edit"


def named(objs: Objects, kind: str) -> set[str]:
    return {o["metadata"]["name"] for o in objs if o["kind"] == kind}


def test_the_default_install_has_one_pool(rendered_sets: dict[str, Objects]) -> None:
    objs = rendered_sets["default"]
    assert named(objs, "Deployment") == {f"{RELEASE}-router", WORKER}
    router = find(objs, "Deployment", f"{RELEASE}-router")
    assert env_of(router)["WORKER_SERVICE_NAME"]["value"] == WORKER


def test_a_second_pool_gets_its_own_objects_and_the_router_watches_both(
    rendered_sets: dict[str, Objects],
) -> None:
    objs = rendered_sets["two-pools"]
    assert named(objs, "Deployment") == {f"{RELEASE}-router", WORKER, EDIT}
    assert {WORKER, EDIT} <= named(objs, "Service")
    assert {WORKER, EDIT} <= named(objs, "NetworkPolicy")
    router = find(objs, "Deployment", f"{RELEASE}-router")
    assert env_of(router)["WORKER_SERVICE_NAME"]["value"] == f"{WORKER},{EDIT}"

    base, edit = find(objs, "Deployment", WORKER), find(objs, "Deployment", EDIT)
    selectors = [d["spec"]["selector"]["matchLabels"] for d in (base, edit)]
    assert selectors[0] != selectors[1]
    assert find(objs, "Service", EDIT)["spec"]["selector"] == selectors[1]
    assert env_of(edit)["MODEL_NAME"]["value"] == EDIT_POOL["modelName"]
    assert env_of(edit)["MODEL_PATH"]["value"] == EDIT_POOL["model"]["path"]
    assert edit["spec"]["replicas"] == 2 and "replicas" not in base["spec"]  # KEDA scales it
    # Keys the pool leaves out come from `worker`; a false in the pool wins over its true.
    assert container(edit)["resources"] == container(base)["resources"]
    assert (
        edit["spec"]["template"]["spec"]["tolerations"]
        == base["spec"]["template"]["spec"]["tolerations"]
    )
    pdbs = named(objs, "PodDisruptionBudget")
    assert WORKER in pdbs and EDIT not in pdbs
