"""`python -m baselines --dataset NAME --model sasrec|gru4rec|caser|popularity|random|all --output_dir DIR`"""

import runtime
from baselines.train import run

if __name__ == "__main__":
    runtime.main(run)
