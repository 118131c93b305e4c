"""Launch under plain srun: SLURM node lists, the derived MASTER_PORT, ranks for training and `openeva embed`."""

import pytest

from openeva.cli.embed_cmd import launch_rank
from openeva.train.distributed import detect_env, expand_hostlist, slurm_master_port


@pytest.mark.parametrize("nodelist, hosts", [
    ("gpu7", ["gpu7"]),
    ("node[03-05,07],gpu1", ["node03", "node04", "node05", "node07", "gpu1"]),
    ("rack[1-2]-n[01-02]", ["rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"]),
    ("a[8-10]b,c[1,3]", ["a8b", "a9b", "a10b", "c1", "c3"]),
    ("dgx-[001-002].cluster", ["dgx-001.cluster", "dgx-002.cluster"]),
])
def test_hostlists_expand_as_scontrol_does(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


def test_bad_hostlists_are_refused():
    for bad in ("n[1-2", "n[[1]]", "n[5-3]", "n[a-b]"):
        with pytest.raises(ValueError, match="SLURM node list"):
            expand_hostlist(bad)


SRUN = {"SLURM_NTASKS": "8", "SLURM_PROCID": "5", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NODELIST": "rack[1-2]-n[01-02]"}


def test_plain_srun_gives_rank_local_rank_world_and_rendezvous():
    info = detect_env(dict(SRUN))
    assert (info["rank"], info["world_size"], info["local_rank"], info["source"]) == (5, 8, 1, "slurm")
    assert info["master_addr"] == "rack1-n01" and info["master_port"] == slurm_master_port("4242") == 14242
    assert slurm_master_port("4242") != slurm_master_port("4243") and slurm_master_port(None) == 29500
    assert slurm_master_port("77_3") == 10773  # array job ids
    # torchrun's variables win; an explicit MASTER_PORT is kept
    assert detect_env({**SRUN, "RANK": "2", "WORLD_SIZE": "4"})["source"] == "torchrun"
    assert detect_env({**SRUN, "MASTER_PORT": "23456"})["master_port"] == 23456


def test_embed_takes_its_rank_from_srun(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(key, raising=False)
    for key, value in SRUN.items():
        monkeypatch.setenv(key, value)
    assert launch_rank() == (5, 8, 1)
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert launch_rank() == (0, 1, 0)
