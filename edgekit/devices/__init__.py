"""Devices: one interface (run, push, pull, info, close) over local, SSH and adb transports."""

from edgekit.devices.base import CommandResult, Device, DeviceInfo, quote
from edgekit.devices.profiles import DeviceProfile, list_profiles, open_device, resolve

__all__ = ["CommandResult", "Device", "DeviceInfo", "DeviceProfile", "list_profiles", "open_device", "quote", "resolve"]
