"""Ship the prebuilt JupyterLab extension in standard wheels only.

An editable install must not carry it: `make labextension` links
share/jupyter/labextensions/jupyter-sac to jupyter_sac/labextension, and pip
would write (and on the next install remove) the extension's files through
that link, in the source tree.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

LABEXTENSION = "share/jupyter/labextensions/jupyter-sac"


class LabextensionDataHook(BuildHookInterface):
    PLUGIN_NAME = "custom"

    def initialize(self, version, build_data):
        if self.target_name != "wheel" or version != "standard":
            return
        build_data["shared_data"].update(
            {
                "jupyter_sac/labextension": LABEXTENSION,
                "labextension/install.json": f"{LABEXTENSION}/install.json",
            }
        )
