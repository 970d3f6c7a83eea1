"""Tiny stand-in for MiniCPM-V's processor interface: the prompt carries one ``(<image>./</image>)`` per
image, which becomes ``<image>`` + n_queries (query_num) ``<unk>`` + ``</image>``; images become pixel_values/tgt_sizes."""

from .tiny_remote_common import PlaceholderProcessor


class MiniCPMVProcessor(PlaceholderProcessor):
    placeholder, start, pad, end = "(<image>./</image>)", "<image>", "<unk>", "</image>"
