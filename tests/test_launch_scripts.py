"""The TPU-pod and SLURM launch scripts cannot run here: check their syntax (bash -n, shellcheck when
installed) and run them against stand-ins for gcloud, scontrol and srun that print what they were given."""
import os
import pathlib
import shutil
import subprocess

import pytest

SCRIPTS = pathlib.Path(__file__).parents[1] / "scripts"
LAUNCHERS = ["tpu_pod.sh", "slurm_pretrain.sh"]


@pytest.mark.parametrize("name", LAUNCHERS)
def test_syntax(name):
    subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)
    if shutil.which("shellcheck"):
        r = subprocess.run(["shellcheck", str(SCRIPTS / name)], capture_output=True, text=True)
        assert r.returncode == 0, r.stdout


def stand_ins(tmp_path, **programs):
    for name, body in programs.items():
        path = tmp_path / name
        path.write_text("#!/bin/bash\n" + body + "\n")
        path.chmod(0o755)
    return {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}"}


ARGS = ["--config", "configs/bert_base_mlm.py", "--workdir", "/shared/my runs", "--config.mesh.shape=(1,-1,1)"]


def test_slurm_one_coordinator_and_a_process_id_per_task(tmp_path):
    env = stand_ins(tmp_path, scontrol="echo gpu-node-7; echo gpu-node-8",
                    srun='shift; for i in 0 1 2 3; do SLURM_PROCID=$i "$@"; done',
                    fake_tljax='echo "$TLJAX_PROCESS_ID/$TLJAX_NUM_PROCESSES@$TLJAX_COORDINATOR"; printf "<%s>" "$@"; echo')
    env.update(SLURM_JOB_NODELIST="gpu-node-[7-8]", SLURM_NTASKS="4", SLURM_SUBMIT_DIR=str(tmp_path),
               TLJAX=str(tmp_path / "fake_tljax"))
    out = subprocess.run(["bash", str(SCRIPTS / "slurm_pretrain.sh"), *ARGS], env=env, capture_output=True,
                         text=True, check=True).stdout.splitlines()
    assert out[0::2] == [f"{i}/4@gpu-node-7:12345" for i in range(4)]
    assert set(out[1::2]) == {"<pretrain>" + "".join(f"<{a}>" for a in ARGS)}


def test_tpu_run_starts_every_worker_with_auto_discovery(tmp_path):
    env = stand_ins(tmp_path, gcloud='printf "<%s>" "$@"; echo')
    env.update(TPU_NAME="pod", ZONE="us-central2-b")
    out = subprocess.run(["bash", str(SCRIPTS / "tpu_pod.sh"), "run", "pretrain", *ARGS], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.startswith("<compute><tpus><tpu-vm><ssh><pod><--zone=us-central2-b><--worker=all>")
    remote = out.split("<--command=")[1].rstrip(">\n")
    # What each worker's shell runs: the same arguments, quoted once, plus --distributed=auto.
    words = subprocess.run(["bash", "-c", 'printf "<%s>" ' + remote.split("&& ", 1)[1]], capture_output=True,
                           text=True, check=True).stdout
    assert words == "".join(f"<{w}>" for w in [".venv/bin/tljax", "pretrain", *ARGS, "--distributed=auto"])
    r = subprocess.run(["bash", str(SCRIPTS / "tpu_pod.sh"), "frobnicate"], env=env, capture_output=True, text=True)
    assert r.returncode == 2 and "usage: tpu_pod.sh" in r.stderr
