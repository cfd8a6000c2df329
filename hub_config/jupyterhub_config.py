# JupyterHub configuration of the embedded jupyter-sac stack (`sac up`).
#
# The `sac` service loads this same file, so c.SacService.* settings go here too.
# Operators: copy this file, then override below the configure() call, e.g.
#   c.SacService.organisation_api_keys = {"anthropic": "sk-ant-..."}
#   c.LocalAgentSpawner.warm_sandboxes = 4
import os

from jupyter_sac.hubconfig import configure, prewarm_when_running

configure(c, config_file=os.path.abspath(__file__))

# Extra configuration (tests, site overrides) from $SAC_EXTRA_CONFIG.
if os.environ.get("SAC_EXTRA_CONFIG"):
    load_subconfig(os.environ["SAC_EXTRA_CONFIG"])

prewarm_when_running(c)
