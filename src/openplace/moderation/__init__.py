"""Moderation: moderator identities, and what moderators do, with an audit log.

- :mod:`.commands` - ``openplace admin token|revoke|audit``.

The moderator token is :mod:`openplace.auth.moderators`; the admin API is
:mod:`openplace.api.admin`; what is kept durably is behind
:class:`openplace.storage.base.Moderation`.
"""
