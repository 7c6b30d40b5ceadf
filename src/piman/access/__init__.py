"""Access: roles and the access matrix (``roles``, pure), passwords, tokens and session ids
(``secrets``), the login throttle (``throttle``, pure), and the accounts service (``service``)."""

from piman.access.roles import Action, Role, allows, may_act_on, parse_role

__all__ = ["Action", "Role", "allows", "may_act_on", "parse_role"]
