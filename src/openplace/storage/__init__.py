"""Storage backends behind one small interface (:class:`openplace.storage.base.Store`)."""
