"""The realtime fan-out: committed placements to every websocket client."""
