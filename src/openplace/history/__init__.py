"""The canvas's past, built from an :class:`~openplace.storage.base.Archive`.

- :mod:`.timeline` - :class:`~.timeline.Timeline`: the board at any seq or time, log
  ranges, heat counts and timelapse frames, with a cache of past boards.
- :mod:`.images` - PNG pictures of boards and heatmaps (Pillow).
- :mod:`.video` - timelapse videos (PyAV, FFmpeg in its wheel).
"""
