"""Notebook widgets (ipywidgets 8) for driving SAC agents.

- ``AgentsPanel(client=None)``: my agents, their state and model; Start (with the
  hub's progress), Stop, Open; a create form; Refresh.
- ``AgentChat(agent)``: a prompt box and a transcript that streams the answer:
  text, tool calls (collapsible, with input and result), the todo list, errors,
  and the turn's cost and tokens.
- ``ApprovalsPanel(client=None, interval=1.0)``: pending human-in-the-loop
  requests, live, with Approve / Deny (and the option of a terminal prompt).
- ``PolicyEditor(client=None, agent=None)``: an agent's approval policy, checked
  as it is typed and saved with a person's token (also inside ``ApprovalsPanel``).
- ``SkillRunner(agent)``: pick an installed skill, fill the form its parameters
  make, Run, read the answer.
- ``TasksPanel(agent, interval=2.0)``: the agent's tasks with their status, result
  and files under output/, Cancel, and a form to submit one (prompt, timeout, a
  repository to check out first); live while a task is open.

Each takes a ``jupyter_sac.client.Client`` (or the agent's) and makes ``Client()``
from the environment when none is given. Network calls run in background
threads; widget updates from them are handed to the kernel's own thread. In a
plain console each prints a text summary instead of ``VBox(...)``.

>>> from jupyter_sac.client import Client
>>> from jupyter_sac.widgets import AgentChat, AgentsPanel
>>> sac = Client()
>>> AgentsPanel(sac)
>>> AgentChat(sac.agent("helper"))
"""

from .agents import AgentRow, AgentsPanel
from .approvals import ApprovalRow, ApprovalsPanel
from .chat import AgentChat, ChatItem, ToolCall
from .policy import PolicyEditor
from .skills import SkillField, SkillRunner
from .tasks import TaskRow, TasksPanel

__all__ = [
    "AgentChat",
    "AgentRow",
    "AgentsPanel",
    "ApprovalRow",
    "ApprovalsPanel",
    "ChatItem",
    "PolicyEditor",
    "SkillField",
    "SkillRunner",
    "TaskRow",
    "TasksPanel",
    "ToolCall",
]
