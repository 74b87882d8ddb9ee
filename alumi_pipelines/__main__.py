import sys

from alumi_pipelines.cli import main

sys.exit(main())
