import sys

from lm_eval_false_demos.cli.main import main

sys.exit(main())
