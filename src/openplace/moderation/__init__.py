"""Moderation: moderator identities, and what moderators do, with an audit log.

- :mod:`.actions` - what each action does (bans, rollback, fill, protected areas,
  freezing), through the store, recorded in the audit log;
- :mod:`.commands` - ``openplace admin``: ``token``, ``revoke`` and ``audit`` on the
  store directly; ``ban``, ``unban``, ``bans``, ``rollback``, ``fill``, ``protect``,
  ``unprotect``, ``freeze`` and ``unfreeze`` through the running canvas's admin API.

The moderator token is :mod:`openplace.auth.moderators`; the admin API is
:mod:`openplace.api.admin`; what placements the policy refuses is
:mod:`openplace.core.policy`; what is kept durably is behind
:class:`openplace.storage.base.Moderation`.
"""
