/**
 * Pure rules of the SAC frontend: no DOM, no JupyterLab, so they are unit-tested
 * (test/*.test.ts) and the widgets stay thin.
 */

// ---- where things are -----------------------------------------------------------

/** `http://localhost:8000` -> `{ scheme: 'http:', hostname: 'localhost', port: ':8000' }`. */
function splitHost(
  hubHost: string
): { scheme: string; hostname: string; port: string } | null {
  const match = /^(https?:)\/\/([^/:]+)(:\d+)?\/?$/.exec(hubHost || '');
  return match ? { scheme: match[1], hostname: match[2], port: match[3] || '' } : null;
}

function hubBase(hubPrefix: string): string {
  let hub = hubPrefix || '/hub/';
  if (!hub.endsWith('/')) {
    hub += '/';
  }
  return hub;
}

/**
 * The `sac` service's base URL. `hubHost` is JupyterHub's `hubHost` page config
 * option: with subdomains the hub's origin (`http://localhost:8000`), and the
 * service has a host of its own (`http://sac--service.localhost:8000/services/sac/`,
 * JupyterHub's default subdomain hook; the name `sac` needs no escaping); without
 * subdomains it is empty and the service is a path beside the hub
 * (`/hub/` -> `/services/sac/`).
 */
export function serviceBase(hubPrefix: string, hubHost = '', service = 'sac'): string {
  const base = hubBase(hubPrefix).replace(/hub\/$/, '');
  const host = splitHost(hubHost);
  const origin = host
    ? `${host.scheme}//${service}--service.${host.hostname}${host.port}`
    : '';
  return `${origin}${base}services/${encodeURIComponent(service)}/`;
}

/**
 * Where to send the browser to open one of the user's agents: the hub's spawn
 * page (on the hub's own host), which starts it if it is stopped (showing
 * progress) and then goes on to its JupyterLab. `next` is a path: the hub
 * keeps only the path of any URL it is given, and sends a path under /user/ on
 * to the server's own host.
 */
export function agentOpenUrl(
  hubHost: string,
  hubPrefix: string,
  user: string,
  slug: string
): string {
  const hub = hubBase(hubPrefix);
  const next = agentLabUrl('', hub, user, slug);
  return `${hubHost || ''}${hub}spawn/${encodeURIComponent(user)}/${encodeURIComponent(slug)}?next=${encodeURIComponent(next)}`;
}

/**
 * The URL of one of the user's agents' JupyterLab (`/user/<name>/<agent>/lab`),
 * on the hub's host (`hubHost`, empty without subdomains), which redirects to the
 * agent's own host: the hub knows how it spells a user's host name.
 */
export function agentLabUrl(
  hubHost: string,
  hubPrefix: string,
  user: string,
  slug: string
): string {
  const base = hubBase(hubPrefix).replace(/hub\/$/, '');
  return `${hubHost || ''}${base}user/${encodeURIComponent(user)}/${encodeURIComponent(slug)}/lab`;
}

/**
 * One of the `sac` service's pages from its public base URL (which ends in `/`),
 * e.g. `approvals/<id>`: only relative paths under the base, so a request id or
 * a name can never send the window elsewhere.
 */
export function servicePageUrl(serviceUrl: string, path: string): string {
  const base = serviceUrl.endsWith('/') ? serviceUrl : `${serviceUrl}/`;
  const decode = (part: string): string => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  };
  const clean = path
    .split('/')
    .map(decode)
    .filter(part => part !== '' && part !== '.' && part !== '..')
    .map(encodeURIComponent)
    .join('/');
  return base + clean;
}

// ---- numbers people read --------------------------------------------------------

const BYTE_UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

/** 1536 -> "1.5 KiB"; whole bytes below 1 KiB. */
export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) {
    return '—';
  }
  let value = Math.max(0, n);
  let unit = 0;
  while (value >= 1024 && unit < BYTE_UNITS.length - 1) {
    value /= 1024;
    unit++;
  }
  const digits = unit === 0 || value >= 100 ? 0 : 1;
  return `${value.toFixed(digits)} ${BYTE_UNITS[unit]}`;
}

/** 1234567 -> "1.2M", 12345 -> "12.3k", 999 -> "999". */
export function formatCount(n: number | null | undefined): string {
  if (n === null || n === undefined || !Number.isFinite(n)) {
    return '—';
  }
  if (Math.abs(n) >= 1e6) {
    return `${(n / 1e6).toFixed(1)}M`;
  }
  if (Math.abs(n) >= 1e4) {
    return `${(n / 1e3).toFixed(1)}k`;
  }
  return String(Math.round(n));
}

/** CPU cores as people say them: 0.25 -> "0.25 CPU", 2 -> "2 CPUs". */
export function formatCpu(cores: number | null | undefined): string {
  if (cores === null || cores === undefined) {
    return '—';
  }
  return `${cores} CPU${cores === 1 ? '' : 's'}`;
}

/** Part of a quota used, 0-100 (100 when over); 0 when there is no limit. */
export function quotaPercent(used: number, limit: number | null | undefined): number {
  if (!limit || limit <= 0) {
    return 0;
  }
  return Math.min(100, Math.round((used / limit) * 1000) / 10);
}

/** The level of a usage bar: fine below 80 %, warn below 95 %, else full. */
export function quotaLevel(percent: number): 'ok' | 'warn' | 'full' {
  return percent >= 95 ? 'full' : percent >= 80 ? 'warn' : 'ok';
}

/** A time as the sidebar shows it: "14:03" today, else "2026-03-01 14:03" (local time). */
export function formatTime(
  iso: string | null | undefined,
  now: Date = new Date()
): string {
  if (!iso) {
    return '—';
  }
  const when = new Date(iso);
  if (Number.isNaN(when.getTime())) {
    return iso;
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  const hm = `${pad(when.getHours())}:${pad(when.getMinutes())}`;
  if (when.toDateString() === now.toDateString()) {
    return hm;
  }
  return `${when.getFullYear()}-${pad(when.getMonth() + 1)}-${pad(when.getDate())} ${hm}`;
}

// ---- the agent -------------------------------------------------------------------

export interface IHubServer {
  ready?: boolean;
  pending?: string | null;
  last_activity?: string | null;
}

/** running, starting, stopping or stopped (the hub's server model). */
export function serverStatus(server: IHubServer | null | undefined): string {
  if (!server) {
    return 'stopped';
  }
  if (server.pending === 'spawn') {
    return 'starting';
  }
  if (server.pending === 'stop') {
    return 'stopping';
  }
  return server.ready ? 'running' : 'stopped';
}

export interface IUsageTotals {
  requests?: number;
  input_tokens?: number;
  output_tokens?: number;
  cache_creation_input_tokens?: number;
  cache_read_input_tokens?: number;
}

export interface IUsageDay extends IUsageTotals {
  day: string;
}

/** Requests and tokens of the days in `month` ("2026-03"), from the usage API's days. */
export function monthUsage(
  days: IUsageDay[],
  month: string
): { requests: number; tokens: number } {
  let requests = 0;
  let tokens = 0;
  for (const d of days) {
    if (!d.day.startsWith(month)) {
      continue;
    }
    requests += d.requests ?? 0;
    tokens +=
      (d.input_tokens ?? 0) +
      (d.output_tokens ?? 0) +
      (d.cache_creation_input_tokens ?? 0) +
      (d.cache_read_input_tokens ?? 0);
  }
  return { requests, tokens };
}

/** "2026-03" for a date, in UTC (the service meters per UTC day). */
export function utcMonth(now: Date = new Date()): string {
  return now.toISOString().slice(0, 7);
}

// ---- tools -------------------------------------------------------------------------

/** One line that says what a tool call does: the command, the file, the pattern. */
export function toolSummary(name: string, input: unknown): string {
  const args = (input && typeof input === 'object' ? input : {}) as Record<
    string,
    unknown
  >;
  const pick = (...keys: string[]): string => {
    for (const key of keys) {
      const v = args[key];
      if (typeof v === 'string' && v) {
        return v;
      }
    }
    return '';
  };
  let text: string;
  switch (name) {
    case 'Bash':
      text = pick('command');
      break;
    case 'Read':
    case 'Write':
    case 'Edit':
    case 'MultiEdit':
    case 'NotebookEdit':
    case 'NotebookRead':
      text = pick('file_path', 'notebook_path', 'path');
      break;
    case 'Glob':
    case 'Grep':
      text = pick('pattern');
      break;
    case 'WebFetch':
      text = pick('url');
      break;
    case 'WebSearch':
      text = pick('query');
      break;
    case 'Task':
      text = pick('description', 'prompt');
      break;
    case 'TodoWrite':
      text = 'update the todo list';
      break;
    default:
      text = pick('command', 'file_path', 'path', 'url', 'query', 'pattern');
      if (!text && Object.keys(args).length) {
        text = JSON.stringify(args);
      }
  }
  const oneLine = text.replace(/\s+/g, ' ').trim();
  return oneLine.length > 160 ? `${oneLine.slice(0, 159)}…` : oneLine;
}

/** What kind of step a tool is, for its icon and grouping in the timeline. */
export function toolKind(
  name: string
): 'command' | 'file' | 'search' | 'web' | 'other' {
  if (name === 'Bash' || name === 'BashOutput' || name === 'KillShell') {
    return 'command';
  }
  if (
    [
      'Read',
      'Write',
      'Edit',
      'MultiEdit',
      'NotebookEdit',
      'NotebookRead',
      'LS'
    ].includes(name)
  ) {
    return 'file';
  }
  if (name === 'Glob' || name === 'Grep') {
    return 'search';
  }
  if (name === 'WebFetch' || name === 'WebSearch') {
    return 'web';
  }
  return 'other';
}

// ---- chat ----------------------------------------------------------------------------

export interface IChatEvent {
  seq: number;
  session_id: string;
  turn_id: string | null;
  time?: string;
  type: string;
  [key: string]: unknown;
}

export interface ITodo {
  content: string;
  status: 'pending' | 'in_progress' | 'completed' | string;
  activeForm?: string;
}

export interface IToolStep {
  id: string;
  name: string;
  input: unknown;
  summary: string;
  kind: ReturnType<typeof toolKind>;
  result: string | null;
  isError: boolean;
  subagent: boolean;
}

export type ChatItem =
  | { kind: 'user'; key: string; text: string }
  | { kind: 'text'; key: string; text: string }
  | { kind: 'thinking'; key: string; text: string }
  | { kind: 'tool'; key: string; step: IToolStep }
  | { kind: 'error'; key: string; text: string; retrying: boolean }
  | { kind: 'result'; key: string; result: ITurnResult }
  | { kind: 'cancelled'; key: string };

export interface ITurnResult {
  cost_usd: number | null;
  duration_ms: number | null;
  num_turns: number | null;
  input_tokens: number;
  output_tokens: number;
  is_error: boolean;
}

export interface IChatState {
  sessionId: string | null;
  lastSeq: number;
  items: ChatItem[];
  todos: ITodo[];
  running: boolean;
}

export function emptyChat(sessionId: string | null = null): IChatState {
  return { sessionId, lastSeq: 0, items: [], todos: [], running: false };
}

/**
 * The chat as it stands after one more event. Events already seen (seq at most
 * the last) change nothing, so a replay after a reconnect is harmless. Assistant
 * text that follows text is one paragraph; a tool result lands on its call.
 */
export function reduceChat(state: IChatState, event: IChatEvent): IChatState {
  if (state.sessionId && event.session_id !== state.sessionId) {
    return state;
  }
  if (event.seq <= state.lastSeq) {
    return state;
  }
  const items = state.items.slice();
  let { todos, running } = state;
  const key = `${event.session_id}:${event.seq}`;
  const last = items[items.length - 1];
  switch (event.type) {
    case 'turn_start':
      running = true;
      items.push({ kind: 'user', key, text: String(event.message ?? '') });
      break;
    case 'text':
      if (last && last.kind === 'text') {
        items[items.length - 1] = {
          ...last,
          text: `${last.text}\n\n${String(event.text ?? '')}`
        };
      } else {
        items.push({ kind: 'text', key, text: String(event.text ?? '') });
      }
      break;
    case 'thinking':
      items.push({ kind: 'thinking', key, text: String(event.text ?? '') });
      break;
    case 'tool_use': {
      const name = String(event.name ?? 'tool');
      items.push({
        kind: 'tool',
        key,
        step: {
          id: String(event.id ?? key),
          name,
          input: event.input,
          summary: toolSummary(name, event.input),
          kind: toolKind(name),
          result: null,
          isError: false,
          subagent: Boolean(event.parent_tool_use_id)
        }
      });
      break;
    }
    case 'tool_result': {
      const id = String(event.tool_use_id ?? '');
      const at = items.findIndex(i => i.kind === 'tool' && i.step.id === id);
      if (at >= 0) {
        const item = items[at] as Extract<ChatItem, { kind: 'tool' }>;
        items[at] = {
          ...item,
          step: {
            ...item.step,
            result: String(event.content ?? ''),
            isError: Boolean(event.is_error)
          }
        };
      }
      break;
    }
    case 'todos':
      todos = Array.isArray(event.todos) ? (event.todos as ITodo[]) : [];
      break;
    case 'result': {
      const usage = (event.usage ?? {}) as Record<string, number>;
      items.push({
        kind: 'result',
        key,
        result: {
          cost_usd: typeof event.cost_usd === 'number' ? event.cost_usd : null,
          duration_ms: typeof event.duration_ms === 'number' ? event.duration_ms : null,
          num_turns: typeof event.num_turns === 'number' ? event.num_turns : null,
          input_tokens:
            (usage.input_tokens ?? 0) +
            (usage.cache_creation_input_tokens ?? 0) +
            (usage.cache_read_input_tokens ?? 0),
          output_tokens: usage.output_tokens ?? 0,
          is_error: Boolean(event.is_error)
        }
      });
      break;
    }
    case 'error':
      items.push({
        kind: 'error',
        key,
        text: String(event.message ?? 'error'),
        retrying: Boolean(event.retry)
      });
      break;
    case 'cancelled':
      items.push({ kind: 'cancelled', key });
      break;
    case 'turn_end':
      running = false;
      break;
    default:
      // session and future event types add nothing to show
      break;
  }
  return {
    sessionId: state.sessionId ?? event.session_id,
    lastSeq: event.seq,
    items,
    todos,
    running
  };
}

/** "$0.0123 · 1.2k in / 340 out · 4.1 s" for a turn's result. */
export function formatTurnCost(result: ITurnResult): string {
  const parts: string[] = [];
  if (result.cost_usd !== null) {
    parts.push(`$${result.cost_usd.toFixed(4)}`);
  }
  parts.push(
    `${formatCount(result.input_tokens)} in / ${formatCount(result.output_tokens)} out`
  );
  if (result.duration_ms !== null) {
    parts.push(`${(result.duration_ms / 1000).toFixed(1)} s`);
  }
  return parts.join(' · ');
}

/** What the Enter key does in the message box: send, or leave a newline. */
export function enterSends(
  key: string,
  mods: { shiftKey: boolean; isComposing?: boolean },
  enterToSend = true
): boolean {
  return key === 'Enter' && enterToSend && !mods.shiftKey && !mods.isComposing;
}

// ---- history -------------------------------------------------------------------------

export interface IHistoryEvent {
  session_id: string;
  uuid: string;
  ts: string;
  kind: string;
  payload: Record<string, unknown>;
}

export interface ITranscriptRow {
  key: string;
  role: 'prompt' | 'answer' | 'thinking' | 'tool' | 'result' | 'other';
  title: string;
  text: string;
  ts: string;
  collapsed: boolean;
}

function contentBlocks(payload: Record<string, unknown>): unknown[] {
  const message = payload.message as Record<string, unknown> | undefined;
  const content = message?.content;
  if (typeof content === 'string') {
    return [{ type: 'text', text: content }];
  }
  return Array.isArray(content) ? content : [];
}

function blockText(content: unknown): string {
  if (typeof content === 'string') {
    return content;
  }
  if (Array.isArray(content)) {
    return content
      .map(c =>
        c && typeof c === 'object' && (c as { type?: string }).type === 'text'
          ? String((c as { text?: string }).text ?? '')
          : `[${(c as { type?: string })?.type ?? 'block'}]`
      )
      .join('\n');
  }
  return content === undefined || content === null ? '' : JSON.stringify(content);
}

/** Text Claude Code adds to a conversation for the model, not typed by anyone. */
function isContext(text: string): boolean {
  return /^\s*<(system-reminder|command-name|command-message|local-command-stdout|user-prompt-submit-hook)/.test(
    text
  );
}

/**
 * Claude Code transcript entries (as history stores them) as readable rows: the
 * user's prompts and the answers open; tool calls, results, thinking and the
 * context Claude Code adds for the model collapsed; bookkeeping entries (queue
 * operations, snapshots, …) left out.
 */
export function transcriptRows(events: IHistoryEvent[]): ITranscriptRow[] {
  const rows: ITranscriptRow[] = [];
  for (const e of events) {
    const type = (e.payload.type as string) ?? e.kind;
    if (type === 'summary') {
      const summary = String(e.payload.summary ?? '');
      if (summary) {
        rows.push({
          key: e.uuid,
          role: 'other',
          title: 'Summary',
          text: summary,
          ts: e.ts,
          collapsed: true
        });
      }
      continue;
    }
    if (type !== 'user' && type !== 'assistant') {
      continue;
    }
    const meta = Boolean(e.payload.isMeta);
    contentBlocks(e.payload).forEach((raw, i) => {
      const b = (raw ?? {}) as Record<string, unknown>;
      const key = `${e.uuid}:${i}`;
      if (b.type === 'text' && typeof b.text === 'string') {
        if (!b.text.trim()) {
          return;
        }
        if (type === 'user' && (meta || isContext(b.text))) {
          rows.push({
            key,
            role: 'other',
            title: 'Context',
            text: b.text,
            ts: e.ts,
            collapsed: true
          });
          return;
        }
        const prompt = type === 'user';
        rows.push({
          key,
          role: prompt ? 'prompt' : 'answer',
          title: prompt ? 'You' : 'Claude',
          text: b.text,
          ts: e.ts,
          collapsed: false
        });
      } else if (b.type === 'thinking') {
        rows.push({
          key,
          role: 'thinking',
          title: 'Thinking',
          text: String(b.thinking ?? ''),
          ts: e.ts,
          collapsed: true
        });
      } else if (b.type === 'tool_use') {
        const name = String(b.name ?? 'tool');
        rows.push({
          key,
          role: 'tool',
          title: `${name}: ${toolSummary(name, b.input)}`,
          text: JSON.stringify(b.input ?? {}, null, 2),
          ts: e.ts,
          collapsed: true
        });
      } else if (b.type === 'tool_result') {
        rows.push({
          key,
          role: 'result',
          title: b.is_error ? 'Tool error' : 'Tool result',
          text: blockText(b.content),
          ts: e.ts,
          collapsed: true
        });
      }
    });
  }
  return rows;
}

// ---- skills ---------------------------------------------------------------------------

export type ParamType = 'text' | 'number' | 'date' | 'select';

export interface ISkillParameter {
  name: string;
  type: ParamType;
  required?: boolean;
  default?: string | number | null;
  help?: string;
  options?: string[];
  min?: number | null;
  max?: number | null;
}

/** The form's starting values: each parameter's default, or empty. */
export function initialValues(params: ISkillParameter[]): Record<string, string> {
  const values: Record<string, string> = {};
  for (const p of params) {
    values[p.name] =
      p.default === undefined || p.default === null ? '' : String(p.default);
  }
  return values;
}

/**
 * The values to send, and what is wrong with them, by parameter name. The service
 * checks them again; this only saves a round trip and says it next to the field.
 */
export function checkValues(
  params: ISkillParameter[],
  raw: Record<string, string>
): { values: Record<string, string | number>; errors: Record<string, string> } {
  const values: Record<string, string | number> = {};
  const errors: Record<string, string> = {};
  for (const p of params) {
    const text = (raw[p.name] ?? '').trim();
    if (!text) {
      if (
        p.required &&
        (p.default === undefined || p.default === null || p.default === '')
      ) {
        errors[p.name] = 'required';
      }
      continue;
    }
    if (p.type === 'number') {
      const n = Number(text);
      if (!Number.isFinite(n)) {
        errors[p.name] = 'not a number';
      } else if (p.min !== undefined && p.min !== null && n < p.min) {
        errors[p.name] = `at least ${p.min}`;
      } else if (p.max !== undefined && p.max !== null && n > p.max) {
        errors[p.name] = `at most ${p.max}`;
      } else {
        values[p.name] = n;
      }
    } else if (p.type === 'date') {
      const ok =
        /^\d{4}-\d{2}-\d{2}$/.test(text) &&
        !Number.isNaN(Date.parse(`${text}T00:00:00Z`));
      if (ok) {
        values[p.name] = text;
      } else {
        errors[p.name] = 'not a date (YYYY-MM-DD)';
      }
    } else if (p.type === 'select') {
      if ((p.options ?? []).includes(text)) {
        values[p.name] = text;
      } else {
        errors[p.name] = `one of ${(p.options ?? []).join(', ')}`;
      }
    } else {
      values[p.name] = text;
    }
  }
  return { values, errors };
}

const PARAM_NAME = /^[a-z][a-z0-9_]{0,39}$/;
const COMMAND = /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/;

/** A skill's command as the service accepts it (kebab-case, at most 64). */
export function isCommand(text: string): boolean {
  return text.length <= 64 && COMMAND.test(text);
}

/**
 * Problems with parameters being edited (names, duplicates, select options,
 * bounds), by row index; empty when they can be saved.
 */
export function checkParameters(params: ISkillParameter[]): Record<number, string> {
  const problems: Record<number, string> = {};
  const seen = new Set<string>();
  params.forEach((p, i) => {
    if (!PARAM_NAME.test(p.name)) {
      problems[i] = 'name: a lowercase letter, then letters, digits or _';
    } else if (seen.has(p.name)) {
      problems[i] = `${p.name} is used twice`;
    } else if (p.type === 'select' && !(p.options ?? []).filter(o => o.trim()).length) {
      problems[i] = 'a select needs options';
    } else if (
      p.type === 'number' &&
      p.min !== null &&
      p.min !== undefined &&
      p.max !== null &&
      p.max !== undefined &&
      p.min > p.max
    ) {
      problems[i] = 'min is above max';
    }
    seen.add(p.name);
  });
  if (params.length > 20) {
    problems[20] = 'at most 20 parameters';
  }
  return problems;
}

/** Parameters as the service stores them: empty fields left out, numbers as numbers. */
export function cleanParameters(params: ISkillParameter[]): ISkillParameter[] {
  return params.map(p => {
    const out: ISkillParameter = {
      name: p.name.trim(),
      type: p.type,
      required: Boolean(p.required)
    };
    if (p.help) {
      out.help = p.help;
    }
    if (p.default !== undefined && p.default !== null && p.default !== '') {
      out.default = p.type === 'number' ? Number(p.default) : String(p.default);
    }
    if (p.type === 'select') {
      out.options = (p.options ?? []).map(o => o.trim()).filter(Boolean);
    }
    if (p.type === 'number') {
      if (p.min !== undefined && p.min !== null) {
        out.min = p.min;
      }
      if (p.max !== undefined && p.max !== null) {
        out.max = p.max;
      }
    }
    return out;
  });
}

// ---- approvals -------------------------------------------------------------------------

export interface IHitlRequest {
  id: string;
  user: string;
  agent: string;
  kind: 'tool' | 'terminal' | string;
  tool: string | null;
  input: unknown;
  question: string | null;
  options: { key: string; label: string }[];
  /** The prompt also takes a text answer of at most this many characters. */
  text_max?: number | null;
  status: string;
  created_at: string;
  expires_at: string | null;
}

/** What a terminal prompt's request saw on screen, as text (null for other requests). */
export function terminalScreen(request: IHitlRequest): string | null {
  const input = request.input as { screen?: unknown } | null;
  return request.kind === 'terminal' && typeof input?.screen === 'string'
    ? input.screen
    : null;
}

/**
 * The pending list after a HITL event (`requested`, `decided`, `cancelled`):
 * newest first, no duplicates, decided and cancelled ones gone.
 */
export function applyHitlEvent(
  pending: IHitlRequest[],
  action: string,
  request: IHitlRequest
): IHitlRequest[] {
  const others = pending.filter(r => r.id !== request.id);
  if (action === 'requested' && request.status === 'pending') {
    return [request, ...others].sort((a, b) =>
      b.created_at.localeCompare(a.created_at)
    );
  }
  return others;
}

/** An installed skill as the service lists it: the version the agent runs (pinned)
 * and the skill's newest one (null when its owner may no longer read the skill). */
export interface IInstalledSkill {
  installed_version: number;
  latest_version: number | null;
  update_available: boolean;
}

/** The version an installed skill can be updated to, or null when there is none.
 * Updates are offered, never applied by themselves (installs are pinned), so the
 * sidebar shows "Update to vN" and sends N: the service refuses if the skill has
 * moved past the version the person was shown. */
export function updateOffer(
  installed: IInstalledSkill | null | undefined
): number | null {
  if (!installed || !installed.update_available || installed.latest_version === null) {
    return null;
  }
  return installed.latest_version > installed.installed_version
    ? installed.latest_version
    : null;
}

/** The words of a text as the marketplace search sees them: lower case, split at
 * whatever is not a letter or a digit. */
function searchWords(text: string): string[] {
  return text
    .toLowerCase()
    .split(/[^\p{L}\p{N}]+/u)
    .filter(word => word);
}

/** Whether a skill matches what is typed in the search box as the marketplace's own
 * search does (docs/skills.md#search): every word typed is the start of a word of
 * its command, title, tags or description; blank matches every skill, punctuation
 * only none. */
export function skillMatches(
  skill: { command?: string; title?: string; description?: string; tags?: string[] },
  query: string
): boolean {
  if (!query.trim()) {
    return true;
  }
  const wanted = searchWords(query);
  const words = searchWords(
    [skill.command, skill.title, skill.description, ...(skill.tags ?? [])].join(' ')
  );
  return wanted.length > 0 && wanted.every(w => words.some(word => word.startsWith(w)));
}

/** What answering a terminal prompt with one of its options means: the ones that
 * refuse (No…, Deny…, Cancel…) deny, every other option allows. */
export function optionDecision(label: string): 'allow' | 'deny' {
  return /^(no|deny|cancel)/i.test(label) ? 'deny' : 'allow';
}

/** Seconds left before a request times out (0 when past), or null without a deadline. */
export function secondsLeft(
  expiresAt: string | null,
  now: Date = new Date()
): number | null {
  if (!expiresAt) {
    return null;
  }
  const t = Date.parse(expiresAt);
  return Number.isNaN(t) ? null : Math.max(0, Math.round((t - now.getTime()) / 1000));
}

// ---- workspace ---------------------------------------------------------------------------

export interface IOutputEvent {
  action: string;
  path: string;
  size?: number | null;
}

export interface IArtifact {
  path: string;
  size: number | null;
  action: string;
  at: string;
}

/**
 * The newest output artifacts after a workspace event: one row per path, the
 * latest first, deleted ones dropped, at most `limit`.
 */
export function applyOutputEvent(
  artifacts: IArtifact[],
  event: IOutputEvent,
  at: string,
  limit = 20
): IArtifact[] {
  const others = artifacts.filter(a => a.path !== event.path);
  if (event.action === 'deleted') {
    return others;
  }
  return [
    { path: event.path, size: event.size ?? null, action: event.action, at },
    ...others
  ].slice(0, limit);
}

/** What the sandbox uses now and the limits that hold, as the service reports it. */
export interface ISandboxUsage {
  running: boolean;
  cpu_percent: number | null;
  memory_bytes: number | null;
  processes: number | null;
  disk_bytes: number | null;
  net_sent_bytes: number | null;
  net_received_bytes: number | null;
  unavailable?: string | null;
  restarts?: number | null;
  limits: {
    cpu?: number | null;
    memory?: number | null;
    processes?: number | null;
    disk?: number | null;
  };
}

/** What a person should know beside a running agent's figures: restarts of its
 * server since it started (a crash loop), and why live figures are missing (the
 * same words as the admin Agents page, service/usage_text.py). */
export function usageNotes(usage: ISandboxUsage | null | undefined): string[] {
  if (!usage || !usage.running) {
    return [];
  }
  const notes: string[] = [];
  if (usage.restarts) {
    const times = usage.restarts === 1 ? 'once' : `${usage.restarts} times`;
    notes.push(`its server crashed and was restarted ${times} since it started`);
  }
  if (usage.unavailable) {
    notes.push(`live figures unavailable: ${usage.unavailable}`);
  }
  return notes;
}

/** The sidebar's resource lines: use now / limit that holds ("not enforced" where
 * none does); before a sample, the limits the settings ask for. */
export function sandboxFacts(
  usage: ISandboxUsage | null | undefined,
  resolved: Record<string, any>
): { cpu: string; memory: string; processes: string; disk: string; network: string } {
  const running = !!usage && usage.running;
  const limits = running && usage ? usage.limits : {};
  const limit = (
    held: number | null | undefined,
    asked: any,
    show: (v: number) => string
  ) => {
    if (!running) {
      return asked ? `${show(asked)} (at start)` : 'no limit';
    }
    return held === null || held === undefined ? 'not enforced' : show(held);
  };
  const now = (value: number | null | undefined, show: (v: number) => string) =>
    running && value !== null && value !== undefined ? show(value) : '—';
  const diskLimit = Number(resolved.disk_limit || 0);
  const disk = usage?.disk_bytes ?? null;
  let diskText = `${disk === null ? '—' : formatBytes(disk)} / ${diskLimit ? formatBytes(diskLimit) : 'no limit'}`;
  if (disk !== null && diskLimit && disk > diskLimit) {
    diskText += ' (over the limit: it will not start again)';
  }
  return {
    cpu: `${now(usage?.cpu_percent, v => `${v}%`)} / ${limit(limits.cpu, resolved.cpu_limit, formatCpu)}`,
    memory: `${now(usage?.memory_bytes, formatBytes)} / ${limit(limits.memory, resolved.mem_limit, formatBytes)}`,
    processes: `${now(usage?.processes, String)} / ${limit(limits.processes, resolved.max_processes, String)}`,
    disk: diskText,
    network:
      running &&
      usage &&
      usage.net_sent_bytes !== null &&
      usage.net_received_bytes !== null
        ? `↑ ${formatBytes(usage.net_sent_bytes)} ↓ ${formatBytes(usage.net_received_bytes)}`
        : '—'
  };
}

// ---- history capture ------------------------------------------------------------------

/** What the sandbox's history spool reports (`sac/api/history/status`). */
export interface IHistoryStatus {
  backlog: number;
  last_error: string | null;
  capture_paused: string | null;
}

/** The state of history capture the sidebar shows: paused (a full disk: the
 * reason), entries waiting for the service (how many), or all stored. */
export function historyCapture(
  status: IHistoryStatus | null | undefined
):
  | { state: 'unknown' }
  | { state: 'paused'; reason: string }
  | { state: 'waiting'; backlog: number }
  | { state: 'stored' } {
  if (!status) {
    return { state: 'unknown' };
  }
  if (status.capture_paused) {
    return { state: 'paused', reason: status.capture_paused };
  }
  if (status.backlog > 0) {
    return { state: 'waiting', backlog: status.backlog };
  }
  return { state: 'stored' };
}

/** What a download of a workspace folder is saved as: its last part, or
 * ``workspace`` for the whole workspace (the server's Content-Disposition says
 * the same; this is the name the page asks for). */
export function archiveName(folder: string): string {
  const parts = folder.split('/').filter(part => part !== '');
  return `${parts.length ? parts[parts.length - 1] : 'workspace'}.zip`;
}
