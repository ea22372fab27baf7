"""The help format every `ema-yolo` sub-command's parser shares."""

import argparse

__all__ = ("HelpFormatter",)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Every sub-command's `-h`: each option's default where it has one (not for None, False or required options)."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.required:
            return action.help
        return super()._get_help_string(action)
