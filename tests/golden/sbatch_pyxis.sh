#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --cpus-per-task=8
#SBATCH --error=/shared/runs/golden-pyxis/submitit/%j_0_log.err
#SBATCH --gpus-per-node=4
#SBATCH --job-name=golden
#SBATCH --mem=400G
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/shared/runs/golden-pyxis/submitit/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --requeue
#SBATCH --signal=USR2@180
#SBATCH --time=1440

# setup
export SUBMITIT_PREEMPT_SIGNAL=USR2
export NCCL_DEBUG=WARN

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /shared/runs/golden-pyxis/submitit/%j_%t_log.out --error /shared/runs/golden-pyxis/submitit/%j_%t_log.err --kill-on-bad-exit=1 '--container-image=nvcr.io#nvidia/pytorch:25.01-py3' --container-mounts=/shared/runs/golden-pyxis:/shared/runs/golden-pyxis,/data:/data,/scratch/hf:/root/.cache/huggingface --container-workdir=/shared/runs/golden-pyxis python -u -m submitit.core._submit /shared/runs/golden-pyxis/submitit
