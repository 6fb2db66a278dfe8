#!/bin/bash

# Parameters
#SBATCH --account=proj
#SBATCH --cpus-per-task=8
#SBATCH --error=/shared/runs/golden-apptainer/submitit/%j_0_log.err
#SBATCH --gres=dcu:4
#SBATCH --job-name=golden
#SBATCH --mem=400G
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --open-mode=append
#SBATCH --output=/shared/runs/golden-apptainer/submitit/%j_0_log.out
#SBATCH --partition=gpu
#SBATCH --requeue
#SBATCH --signal=USR2@180
#SBATCH --time=1440

# setup
module load compiler/dtk/25.04
export SUBMITIT_PREEMPT_SIGNAL=USR2
export NCCL_DEBUG=WARN

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output /shared/runs/golden-apptainer/submitit/%j_%t_log.out --error /shared/runs/golden-apptainer/submitit/%j_%t_log.err --kill-on-bad-exit=1 apptainer exec --rocm --bind /shared/runs/golden-apptainer:/shared/runs/golden-apptainer,/opt/hyhal:/opt/hyhal:ro /images/llava-dcu.sif python -u -m submitit.core._submit /shared/runs/golden-apptainer/submitit
