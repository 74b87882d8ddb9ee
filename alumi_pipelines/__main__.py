from alumi_pipelines.cli import main
import sys
sys.exit(main())
