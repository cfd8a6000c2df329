"""SacExtensionApp: the sandbox side of SAC, mounted under ``<base_url>sac/``."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import secrets
import signal
import socket
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_server.extension.application import ExtensionApp
from traitlets import Bool, Float, Integer, List, Unicode, default

from ..logs import json_logs_wanted, use_json_logs
from ..rules.secrets import SECRET_ENV_NAMES_VAR, SECRETS_DIR_VAR, Redactor
from ..rules.templates import TEMPLATE_ENV_VAR, claude_args, parse_runtime
from ..runtimes.claude import claude_binary
from ..runtimes.claude_config import apply_template, seed_claude_config
from .capture import TranscriptCapture
from .chat import ChatManager
from .chat_handlers import (
    ChatCancelHandler,
    ChatEventsSocket,
    ChatHandler,
    ChatSessionHandler,
    ChatSessionsHandler,
)
from .exec_handlers import ExecSocket, TerminalScreenHandler
from .handlers import (
    ActivityHandler,
    HistoryStatusHandler,
    HitlStatusHandler,
    OpenApiHandler,
    PreToolUseHookHandler,
    StatusHandler,
    TerminalHandler,
    TerminalRestartHandler,
    TranscriptHookHandler,
)
from .hitl import HITL_EVENT_SCHEMA, HITL_EVENT_SCHEMA_ID, HitlBridge, TerminalPromptWatcher
from .runtime_info import RuntimeInfo
from .service_client import ServiceClient
from .service_relay import ServiceRelayHandler
from .skills_handlers import InstalledSkillsHandler, RunHandler, SyncHandler
from .skills_sync import SkillSync
from .spool import HistorySpool, HistoryUploader
from .task_handlers import TaskRunHandler
from .terminal import TERMINAL_MODE, TERMINAL_NAME, ClaudeTerminal
from .terminal_manager import SacTerminalManager
from .workspace_handlers import ArchiveHandler, PreviewHandler, WorkspaceHandler
from .workspace_sync import WorkspaceSync

# Seconds a stopping server spends sending its spooled history (the workspace's
# flush has its own 8 s; both run at once, within JupyterHub's 10 s).
HISTORY_FLUSH_TIMEOUT = 8.0

# In a local sandbox: the open file of the listening socket the hub reaches this
# server through (the launcher names it; jupyter_sac/spawner/netrelay.py).
SERVER_SOCKET_FD_ENV = "SAC_SERVER_SOCKET_FD"

# The longest HITL timeout the settings allow, plus slack: the PreToolUse hook
# must outlive any wait the service can impose.
MAX_HITL_WAIT = 7 * 86400 + 120


def granted_secrets() -> dict[str, str]:
    """The values of the secrets this agent was given, by where they are: the
    variables the spawner named in $SAC_SECRET_ENV and the files in
    $SAC_SECRETS_DIR (read once, at start: what history is scrubbed of)."""
    found: dict[str, str] = {}
    for name in filter(None, os.environ.get(SECRET_ENV_NAMES_VAR, "").split(",")):
        if os.environ.get(name):
            found[name] = os.environ[name]
    directory = os.environ.get(SECRETS_DIR_VAR)
    if directory and os.path.isdir(directory):
        for entry in os.scandir(directory):
            try:
                with open(entry.path, encoding="utf-8", errors="replace") as f:
                    found.setdefault(entry.name, f.read())
            except OSError:
                continue
    return found


ROUTES: list[tuple[str, Any]] = [
    (r"/sac/api/openapi.json", OpenApiHandler),
    (r"/sac/api/status", StatusHandler),
    (r"/sac/api/activity", ActivityHandler),
    (r"/sac/api/terminal", TerminalHandler),
    (r"/sac/api/terminal/restart", TerminalRestartHandler),
    (r"/sac/api/terminal/screen", TerminalScreenHandler),
    (r"/sac/api/exec", ExecSocket),
    (r"/sac/api/history/status", HistoryStatusHandler),
    (r"/sac/api/hitl", HitlStatusHandler),
    (r"/sac/api/hooks/transcript", TranscriptHookHandler),
    (r"/sac/api/hooks/pre-tool-use", PreToolUseHookHandler),
    (r"/sac/api/chat", ChatHandler),
    (r"/sac/api/chat/sessions", ChatSessionsHandler),
    (r"/sac/api/chat/sessions/([^/]+)", ChatSessionHandler),
    (r"/sac/api/chat/sessions/([^/]+)/cancel", ChatCancelHandler),
    (r"/sac/api/chat/events", ChatEventsSocket),
    (r"/sac/api/skills", InstalledSkillsHandler),
    (r"/sac/api/skills/sync", SyncHandler),
    (r"/sac/api/skills/([^/]+)/run", RunHandler),
    (r"/sac/api/workspace", WorkspaceHandler),
    (r"/sac/api/workspace/preview", PreviewHandler),
    (r"/sac/api/workspace/archive", ArchiveHandler),
    (r"/sac/api/tasks/run", TaskRunHandler),
    (r"/sac/api/service/(.*)", ServiceRelayHandler),
]

WORKSPACE_EVENT_SCHEMA_ID = "https://events.jupyter-sac.org/workspace/output/v1"
WORKSPACE_EVENT_SCHEMA = {
    "$id": WORKSPACE_EVENT_SCHEMA_ID,
    "version": "1",
    "title": "A file under /workspace/output changed",
    "description": "Emitted when the agent's output files are stored, changed or removed.",
    "type": "object",
    "properties": {
        "action": {"enum": ["created", "modified", "updated", "deleted"]},
        "path": {"type": "string"},
        "size": {"type": "integer"},
    },
    "required": ["action", "path"],
}


PR_SET_DUMPABLE = 4


def keep_out_of_this_process(log: logging.Logger) -> None:
    """Make the agent's server process non-dumpable, so that what runs in its
    sandbox as the same user (the model's commands) cannot attach to it: no ptrace,
    no /proc/<pid>/mem, no pidfd_getfd of its listening socket. With that socket a
    process could accept the connections meant for the server, and read the tokens
    they carry: the owner's, and the `sac` service's (the idle culler, exec and
    screen call the server with it). Children get their own flag back at exec, so
    the commands and claude the server starts are unaffected. (Linux; elsewhere
    there is no such sandbox.)"""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        failed = libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0
    except (OSError, AttributeError):
        failed = True
    if failed:
        log.warning("jupyter_sac: could not make the server process non-dumpable")


class SacExtensionApp(ExtensionApp):
    name = "jupyter_sac"
    load_other_extensions = True

    runtime = Unicode(help="Agent runtime in this sandbox (default: $SAC_RUNTIME).").tag(
        config=True
    )

    agent_sandbox = Bool(
        help="""Whether this server is an agent's sandbox (default: $SAC_AGENT is set,
        as every agent spawner sets it). Outside one (a developer's own `jupyter lab`
        in an environment where the wheel enabled this extension), only
        sac/api/status is served: ~/.claude, the environment and signals are left
        alone.""",
    ).tag(config=True)

    @default("agent_sandbox")
    def _default_agent_sandbox(self) -> bool:
        return bool(os.environ.get("SAC_AGENT"))

    @default("runtime")
    def _default_runtime(self) -> str:
        return os.environ.get("SAC_RUNTIME", "claude")

    workspace = Unicode(
        help="Directory the agent works in (default: $SAC_WORKSPACE, else the server's root)."
    ).tag(config=True)

    @default("workspace")
    def _default_workspace(self) -> str:
        return os.environ.get("SAC_WORKSPACE") or str(self.serverapp.root_dir)

    state_dir = Unicode(
        help="""Where the extension keeps its durable state (history spool, transcript
        offsets, chat sessions). Default: ~/.local/share/jupyter-sac.""",
    ).tag(config=True)

    @default("state_dir")
    def _default_state_dir(self) -> str:
        return os.path.expanduser("~/.local/share/jupyter-sac")

    claude_config_dir = Unicode(
        help="CLAUDE_CONFIG_DIR of the agent (default: $CLAUDE_CONFIG_DIR, else ~/.claude).",
    ).tag(config=True)

    @default("claude_config_dir")
    def _default_claude_config_dir(self) -> str:
        return os.environ.get("CLAUDE_CONFIG_DIR") or os.path.expanduser("~/.claude")

    terminal_args = List(
        Unicode(),
        ["--permission-mode", "default"],
        help="""Arguments of the claude CLI in the Claude terminal. The default
        permission mode shows Claude Code's own approval menus, which the prompt
        watcher turns into human-in-the-loop requests.""",
    ).tag(config=True)

    chat_args = List(
        Unicode(),
        [],
        help="""Extra arguments of the claude CLI of chat sessions, besides those
        the SDK's control protocol sets (stream-json input and output,
        --permission-mode bypassPermissions, --session-id or --resume). A value
        follows its flag: ["--model", "sonnet"].""",
    ).tag(config=True)

    chat_idle_release = Float(
        300.0,
        help="""Seconds a chat session's claude process stays up after its last turn.
        A turn in an open session is one more message to that process (no CLI
        start); a released session's next turn starts claude again with
        --resume (the same conversation). 0 releases it as soon as a turn ends.""",
    ).tag(config=True)

    chat_max_idle_processes = Integer(
        2,
        help="""How many chat sessions may keep an idle claude process (about 200 MiB
        each) waiting for their next turn; beyond it, the least recently used one is
        released at once (its next turn resumes). Running turns are not counted.""",
    ).tag(config=True)

    chat_max_processes = Integer(
        4,
        help="""How many claude processes chat sessions may hold at once, running a
        turn, idle or saving (about 200 MiB each, within the sandbox's memory
        limit). Idle ones are released to make room for a new session's turn; a
        turn that needs a process while this many turns run is refused (409
        chat_busy).""",
    ).tag(config=True)

    chat_interrupt_grace = Float(
        3.0,
        help="""Seconds a cancelled chat turn gets to stop after SIGINT (claude then
        ends its tools and saves the conversation) before SIGTERM, and as long again
        before SIGKILL.""",
    ).tag(config=True)

    terminal_idle_release = Float(
        600.0,
        help="""Seconds after which an unwatched Claude terminal has its claude process
        stopped, to free its memory (a couple of hundred MiB): no browser attached,
        no output and no HITL request waiting for that long. Claude is stopped as a
        closed terminal stops it (SIGHUP: it saves the conversation and runs its
        SessionEnd hook, so the history is complete); the terminal keeps its name,
        and the next attach (JupyterLab opening it, POST sac/api/terminal, a skill
        run into it) starts claude again with --resume: the same conversation,
        redrawn. Text typed into claude's input box but not sent is not kept.
        0 never releases it.""",
    ).tag(config=True)

    start_terminal = Bool(
        False,
        help="""Start the Claude terminal when the server starts. By default it starts
        on first use (POST sac/api/terminal, which JupyterLab calls when it opens).""",
    ).tag(config=True)

    watch_terminal_prompts = Bool(
        True,
        help="File HITL requests for prompts the Claude terminal shows (the prompt detector).",
    ).tag(config=True)

    spool_segment_bytes = Integer(
        8 * 1024 * 1024, help="Size at which the history spool starts a new segment file."
    ).tag(config=True)

    skills_sync_interval = Float(
        15.0,
        help="""Seconds between checks for changed skill installs (a conditional GET
        that costs one small query when nothing changed; 0 turns polling off, leaving
        the sync at start and POST sac/api/skills/sync).""",
    ).tag(config=True)

    workspace_poll_interval = Float(
        15.0,
        help="""Seconds between checks for workspace files changed elsewhere (a
        conditional GET; 0: only at start and on POST sac/api/workspace). Local
        changes are uploaded as they happen.""",
    ).tag(config=True)

    workspace_debounce_ms = Integer(
        300,
        help="""Milliseconds the workspace watcher waits for more changes before it
        uploads a batch (editors write a file in several steps).""",
    ).tag(config=True)

    log_json = Bool(
        help="""Write the server's log as JSON, one object per line (time, level,
        logger, message, exception) from the moment this extension loads (the
        server's first start-up lines stay text). Default: $SAC_LOG_FORMAT is "json".""",
    ).tag(config=True)

    @default("log_json")
    def _default_log_json(self) -> bool:
        return json_logs_wanted()

    # ---- setup ------------------------------------------------------------------

    def _hook_url(self) -> str:
        """Where claude's hooks reach this server: the address it listens on, or
        loopback when it listens on every address. A server bound to one address
        (a pod's own, an interface) does not answer on 127.0.0.1, and a hook that
        cannot reach it denies the tool."""
        server = self.serverapp
        scheme = "https" if server.certfile else "http"
        answers_on_loopback = ("", "0.0.0.0", "*", "::", "localhost")
        host = "127.0.0.1" if server.ip in answers_on_loopback else server.ip
        if ":" in host:
            host = f"[{host}]"
        return f"{scheme}://{host}:{server.port}{server.base_url}sac/api/hooks/"

    def initialize_settings(self) -> None:
        if self.log_json:
            # The server's logger: tornado's loggers are hooked to it (ServerApp).
            use_json_logs(self.log, self.serverapp.log)
        if self.agent_sandbox:
            keep_out_of_this_process(self.log)
        if not self.agent_sandbox:
            self.settings["sac_runtime_info"] = RuntimeInfo(runtime=self.runtime)
            self.log.info(
                "jupyter_sac: not an agent's sandbox ($SAC_AGENT is not set); serving"
                " sac/api/status only and leaving %s alone",
                self.claude_config_dir,
            )
            return
        state = Path(self.state_dir)
        api_key = os.environ.get("ANTHROPIC_API_KEY")
        # Children (terminals, chat turns, their hooks) inherit these.
        hook_secret = secrets.token_urlsafe(32)
        os.environ.update(
            {
                "CLAUDE_CONFIG_DIR": self.claude_config_dir,
                "SAC_HOOK_URL": self._hook_url(),
                "SAC_HOOK_SECRET": hook_secret,
            }
        )
        seed_claude_config(
            Path(self.claude_config_dir),
            workspace=self.workspace,
            api_key=api_key,
            hooks_url=self._hook_url(),
            pre_tool_timeout=MAX_HITL_WAIT,
        )

        # The template the agent was made from (docs/templates.md): its files where
        # claude reads them, its prompt, tool limits and MCP servers as claude's flags
        # in the terminal and in chat alike.
        terminal_args, chat_args = list(self.terminal_args), list(self.chat_args)
        template = parse_runtime(os.environ.get(TEMPLATE_ENV_VAR))
        if template is not None:
            try:
                mcp_path = apply_template(
                    template,
                    config_dir=Path(self.claude_config_dir),
                    workspace=Path(self.workspace),
                    state_dir=state,
                )
            except (OSError, ValueError):
                # claude still runs, with the template's flags; the files are missing.
                self.log.exception("jupyter_sac: could not write the agent template's files")
                mcp_path = None
            terminal_args = claude_args(
                template, terminal_args, chat=False, mcp_config_path=mcp_path
            )
            chat_args = claude_args(template, chat_args, chat=True, mcp_config_path=mcp_path)
            self.log.info(
                "jupyter_sac: agent template %s version %s applied",
                template.get("name") or template.get("id"),
                template.get("version"),
            )

        # One client for every part that talks to the service (closed at the stop).
        redact = Redactor(granted_secrets())
        if redact:
            self.log.info("jupyter_sac: captured history is scrubbed of this agent's secrets")
        client = ServiceClient(
            os.environ.get("SAC_SERVICE_URL", ""),
            os.environ.get("SAC_AGENT_TOKEN", ""),
            redact=redact,
        )
        spool = HistorySpool(state / "history-spool", self.spool_segment_bytes, redact=redact)
        uploader = HistoryUploader(spool, client)
        logger = self.serverapp.event_logger
        logger.register_event_schema(HITL_EVENT_SCHEMA)
        logger.register_event_schema(WORKSPACE_EVENT_SCHEMA)
        bridge = HitlBridge(
            client,
            lambda action, request: logger.emit(
                schema_id=HITL_EVENT_SCHEMA_ID, data={"action": action, "request": request}
            ),
        )

        def watch(term: object) -> None:
            if self.watch_terminal_prompts:
                try:
                    watcher = TerminalPromptWatcher(term, bridge, TERMINAL_NAME)
                    watcher.attach()
                    bridge.watcher = watcher
                except Exception:
                    # The terminal works without its watcher; HITL from the UI doesn't.
                    self.log.exception("could not watch the Claude terminal for prompts")

        # One capture for the terminal's hooks and the chat sessions: the same
        # offsets, so a conversation continued in either goes on from one place.
        capture = TranscriptCapture(
            spool, state / "transcripts", Path(self.claude_config_dir), uploader.wake
        )
        binary = claude_binary() or "claude"
        terminal = ClaudeTerminal(
            lambda: self.serverapp.web_app.settings["terminal_manager"],
            argv=[binary, *terminal_args],
            cwd=self.workspace,
            env={"SAC_CLAUDE_MODE": TERMINAL_MODE},
            on_start=watch,
            idle_release=self.terminal_idle_release,
            # A request waiting for a human (the menu on screen) keeps claude up.
            busy=lambda: (
                bool(bridge.pending)
                or (bridge.watcher is not None and bridge.watcher.current is not None)
            ),
            capture=capture,
        )
        self.settings.update(
            {
                "sac_runtime_info": RuntimeInfo(runtime=self.runtime),
                "sac_hook_secret": hook_secret,
                "sac_workspace": self.workspace,
                "sac_history_spool": spool,
                "sac_transcript_capture": capture,
                "sac_history_uploader": uploader,
                "sac_service_client": client,
                "sac_hitl": bridge,
                "sac_claude_terminal": terminal,
                "sac_skill_sync": SkillSync(client, Path(self.claude_config_dir)),
                "sac_workspace_sync": WorkspaceSync(
                    client,
                    Path(self.workspace),
                    state / "workspace.json",
                    who=os.environ.get("JUPYTERHUB_USER", "")
                    + "/"
                    + os.environ.get("JUPYTERHUB_SERVER_NAME", ""),
                    on_output=lambda action, path, size: logger.emit(
                        schema_id=WORKSPACE_EVENT_SCHEMA_ID,
                        data={"action": action, "path": path, "size": size},
                    ),
                ),
                "sac_chat": ChatManager(
                    state / "chat",
                    argv=[binary, *chat_args],
                    cwd=self.workspace,
                    claude_config_dir=Path(self.claude_config_dir),
                    interrupt_grace=self.chat_interrupt_grace,
                    terminate_grace=self.chat_interrupt_grace,
                    on_activity=self._chat_activity,
                    decide_tool=bridge.decide_tool,
                    capture=capture,
                    idle_release=self.chat_idle_release,
                    max_idle_processes=self.chat_max_idle_processes,
                    max_processes=self.chat_max_processes,
                    pre_tool_timeout=MAX_HITL_WAIT,
                    on_turn_end=client.report_turn if client.configured else None,
                ),
            }
        )

    def _chat_activity(self) -> None:
        # A running chat turn is activity: the hub's idle culler must not stop it.
        self.serverapp.web_app.settings["api_last_activity"] = datetime.now(UTC)

    def initialize_handlers(self) -> None:
        if not self.agent_sandbox:
            self.handlers.extend(r for r in ROUTES if r[1] is StatusHandler)
            return
        self.handlers.extend(ROUTES)

    def _accept_on_handed_socket(self) -> None:
        """In a local sandbox with a network of its own, the hub reaches the server
        through a listening unix socket it made and handed over (netrelay.py); the
        server accepts on it itself, one hop and one copy of every byte less than a
        relay to its loopback port."""
        fd = os.environ.pop(SERVER_SOCKET_FD_ENV, "")
        if not fd.isdigit():
            return
        listener = socket.socket(fileno=int(fd))
        # tornado accepts in its loop, which a blocking accept would stall.
        listener.setblocking(False)
        self.serverapp.http_server.add_socket(listener)

    async def _start_jupyter_server_extension(self, serverapp: object) -> None:
        # Before anything else: the hub's readiness check comes through this socket.
        self._accept_on_handed_socket()
        if not self.agent_sandbox:
            return
        self.settings["sac_history_uploader"].start()
        # The first poll is the sync at start; it runs in the background so a slow
        # service never delays the server (a run syncs on demand anyway).
        self.settings["sac_skill_sync"].start(self.skills_sync_interval)
        # JupyterHub stops a server with SIGINT, which (without a terminal) ends
        # jupyter_server's loop at once, skipping every extension's stop hook. Stop as
        # on SIGTERM instead, so the workspace is flushed and chat turns end cleanly.
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, self.serverapp._signal_stop)
        workspace_sync = self.settings["sac_workspace_sync"]
        # The areas exist before the first pull, so the agent can write at once.
        workspace_sync.ensure_layout()
        if self.settings["sac_service_client"].configured:
            workspace_sync.start(self.workspace_poll_interval, self.workspace_debounce_ms)
        manager = self.serverapp.web_app.settings.get("terminal_manager")
        if isinstance(manager, SacTerminalManager):
            # A terminal made by name "claude" (JupyterLab restoring its layout)
            # is the Claude terminal, not a shell under its name.
            manager.claude = self.settings["sac_claude_terminal"]
            # Releasing needs the manager's help (the name kept, the next attach).
            self.settings["sac_claude_terminal"].start_idle_release()
        if self.start_terminal:
            try:
                await self.settings["sac_claude_terminal"].ensure()
            except Exception:
                self.log.exception("could not start the Claude terminal")

    async def stop_extension(self) -> None:
        terminal = self.settings.get("sac_claude_terminal")
        if terminal is not None:
            await terminal.stop_idle_release()
        chat = self.settings.get("sac_chat")
        if chat is not None:
            await chat.stop()
        # The workspace and the history spool are flushed side by side: each may
        # take up to its flush timeout, and JupyterHub escalates after 10 s.
        flushes = []
        workspace_sync = self.settings.get("sac_workspace_sync")
        if workspace_sync is not None:
            flushes.append(workspace_sync.stop())
        capture = self.settings.get("sac_transcript_capture")
        if capture is not None:
            await capture.stop()
        uploader = self.settings.get("sac_history_uploader")
        if uploader is not None:
            flushes.append(uploader.stop(flush_timeout=HISTORY_FLUSH_TIMEOUT))
        await asyncio.gather(*flushes)
        skill_sync = self.settings.get("sac_skill_sync")
        if skill_sync is not None:
            await skill_sync.stop()
        # Last: the parts above may still talk to the service while they stop.
        client = self.settings.get("sac_service_client")
        if client is not None:
            await client.close()
