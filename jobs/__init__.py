"""What users run: ``python -m jobs.submit`` and the other commands of the job system."""
import warnings

# torch 2.1 (the dcu stack) imports pynvml in torch.cuda, and pynvml >= 12, which DeepSpeed pulls in,
# warns at import that it is deprecated: noise before every command's own output that a user cannot
# act on (jobs.quiet holds the library warnings silenced later, once a command runs)
warnings.filterwarnings("ignore", message="The pynvml package is deprecated", category=FutureWarning)
