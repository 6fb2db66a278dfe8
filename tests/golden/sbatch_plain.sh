#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=8
#SBATCH --error=/shared/runs/golden-plain/submitit/%j_0_log.err
#SBATCH --exclude=bad1
#SBATCH --exclusive
#SBATCH --gpus-per-node=4
#SBATCH --job-name=golden
#SBATCH --mail-type=END
#SBATCH --mem=400G
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/shared/runs/golden-plain/submitit/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --requeue
#SBATCH --signal=USR2@180
#SBATCH --time=1440

# setup
module load cuda/12.4
export PATH=/opt/venv/bin:$PATH
export SUBMITIT_PREEMPT_SIGNAL=USR2
export NCCL_DEBUG=WARN

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /shared/runs/golden-plain/submitit/%j_%t_log.out --error /shared/runs/golden-plain/submitit/%j_%t_log.err --kill-on-bad-exit=1 /opt/venv/bin/python -u -m submitit.core._submit /shared/runs/golden-plain/submitit
