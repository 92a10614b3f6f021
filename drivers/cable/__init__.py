"""Liquid-cooled cable/connector monitors: frames described in DBC files, decoded with cantools."""
