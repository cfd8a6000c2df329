/**
 * The two servers the frontend talks to:
 *
 * - the agent's own Jupyter server (`sac/api/...`, the sandbox extension): the
 *   terminal, chat, installed skills and runs, workspace sync and previews;
 * - the `sac` service (`/services/sac/api/...`) as the logged-in user: the
 *   agent's record and usage, the marketplace, history, HITL decisions.
 *
 * The service is called with the browser's own login (JupyterHub OAuth), never
 * with the sandbox's token: a sandbox may not decide its own agent's HITL
 * requests, a person may.
 */

import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { serviceBase } from './logic';

/** An error answered by either server, with the service's `error` code. */
export class SacError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly field?: string
  ) {
    super(message);
    this.name = 'SacError';
  }
}

async function errorOf(response: Response): Promise<SacError> {
  let code = `http_${response.status}`;
  let message = response.statusText || `HTTP ${response.status}`;
  let field: string | undefined;
  try {
    const body = await response.json();
    if (body && typeof body === 'object') {
      code = typeof body.error === 'string' ? body.error : code;
      message = body.message ?? body.reason ?? message;
      field = body.field;
    }
  } catch {
    // not JSON: keep the status text
  }
  return new SacError(response.status, code, String(message), field);
}

async function jsonOf<T>(response: Response): Promise<T> {
  if (!response.ok) {
    throw await errorOf(response);
  }
  if (response.status === 204) {
    return undefined as T;
  }
  return (await response.json()) as T;
}

/** Who and where this JupyterLab is: the hub user, the agent (named server). */
export interface IAgentRef {
  user: string;
  slug: string;
  hubPrefix: string;
  /** The hub's origin with subdomains (`http://localhost:8000`), else empty. */
  hubHost: string;
  service: string;
}

export function currentAgent(): IAgentRef {
  const hubPrefix = PageConfig.getOption('hubPrefix') || '/hub/';
  return {
    user: PageConfig.getOption('hubUser'),
    slug: PageConfig.getOption('hubServerName'),
    hubPrefix,
    hubHost: PageConfig.getOption('hubHost') || '',
    service: serviceBase(hubPrefix)
  };
}

// ---- the sandbox extension ----------------------------------------------------------

export class ExtensionClient {
  readonly settings = ServerConnection.makeSettings();

  url(path: string, query?: Record<string, string>): string {
    const url = URLExt.join(this.settings.baseUrl, 'sac/api', path);
    return query ? url + URLExt.objectToQueryString(query) : url;
  }

  async request<T>(path: string, init: RequestInit = {}, query?: Record<string, string>): Promise<T> {
    const response = await ServerConnection.makeRequest(this.url(path, query), init, this.settings);
    return jsonOf<T>(response);
  }

  post<T>(path: string, body?: unknown): Promise<T> {
    return this.request<T>(path, {
      method: 'POST',
      body: body === undefined ? undefined : JSON.stringify(body)
    });
  }

  status(): Promise<any> {
    return this.request('status');
  }

  /** Start the agent's `claude` terminal if it is not running. */
  ensureTerminal(): Promise<{ name: string }> {
    return this.post('terminal');
  }

  restartTerminal(): Promise<{ name: string }> {
    return this.post('terminal/restart');
  }

  chatSend(message: string, sessionId: string | null): Promise<{ session_id: string; turn_id: string }> {
    return this.post('chat', { message, session_id: sessionId });
  }

  chatSessions(): Promise<{ sessions: any[] }> {
    return this.request('chat/sessions');
  }

  chatSession(id: string): Promise<{ events: any[] } & Record<string, any>> {
    return this.request(`chat/sessions/${encodeURIComponent(id)}`);
  }

  chatCancel(id: string): Promise<{ cancelled: boolean }> {
    return this.post(`chat/sessions/${encodeURIComponent(id)}/cancel`);
  }

  /** The chat events websocket (all sessions, or one from after `since`). */
  chatSocket(sessionId: string | null, since: number): WebSocket {
    const query: Record<string, string> = { since: String(since) };
    if (sessionId) {
      query.session_id = sessionId;
    }
    let url = URLExt.join(this.settings.wsUrl, 'sac/api/chat/events') + URLExt.objectToQueryString(query);
    const token = this.settings.token;
    if (token && this.settings.appendToken) {
      url += `&token=${encodeURIComponent(token)}`;
    }
    return new this.settings.WebSocket(url);
  }

  installedSkills(): Promise<any> {
    return this.request('skills');
  }

  syncSkills(): Promise<any> {
    return this.post('skills/sync');
  }

  runSkill(
    command: string,
    values: Record<string, unknown>,
    mode: 'chat' | 'terminal',
    sessionId: string | null = null
  ): Promise<any> {
    return this.post(`skills/${encodeURIComponent(command)}/run`, { values, mode, session_id: sessionId });
  }

  workspace(): Promise<any> {
    return this.request('workspace');
  }

  syncWorkspace(): Promise<any> {
    return this.post('workspace');
  }

  hitl(): Promise<any> {
    return this.request('hitl');
  }
}

// ---- the sac service, as the logged-in user ------------------------------------------------

interface ISession {
  xsrf: string;
  user: string;
  admin: boolean;
}

const SESSION_TIMEOUT_MS = 30000;

/**
 * Signs the browser in to the service: loads its `session` page in a hidden
 * same-origin frame (a navigation, so it may pass through the hub's OAuth
 * login), then reads the XSRF token the page carries.
 */
function openSession(service: string): Promise<ISession> {
  return new Promise((resolve, reject) => {
    const frame = document.createElement('iframe');
    frame.style.display = 'none';
    frame.setAttribute('aria-hidden', 'true');
    frame.title = 'SAC session';
    const done = (error: Error | null, session?: ISession) => {
      window.clearTimeout(timer);
      frame.remove();
      if (error) {
        reject(error);
      } else {
        resolve(session!);
      }
    };
    const timer = window.setTimeout(
      () => done(new SacError(0, 'session_timeout', 'the SAC service did not answer')),
      SESSION_TIMEOUT_MS
    );
    frame.addEventListener('load', () => {
      let doc: Document | null = null;
      try {
        doc = frame.contentDocument;
      } catch {
        doc = null;
      }
      const meta = (name: string) =>
        doc?.querySelector(`meta[name="${name}"]`)?.getAttribute('content') ?? null;
      const xsrf = meta('sac-xsrf');
      if (xsrf) {
        done(null, { xsrf, user: meta('sac-user') ?? '', admin: meta('sac-admin') === 'true' });
      } else if (doc && doc.location.pathname.startsWith(`${service}session`)) {
        done(new SacError(403, 'forbidden', doc.body?.innerText?.slice(0, 300) || 'the SAC service refused the session'));
      }
      // else: an OAuth redirect page on the way; wait for the next load
    });
    frame.src = `${service}session`;
    document.body.appendChild(frame);
  });
}

export class ServiceClient {
  private _session: Promise<ISession> | null = null;

  constructor(readonly agent: IAgentRef) {}

  get base(): string {
    return this.agent.service;
  }

  /** The agent's own API path under the service: `users/<u>/agents/<slug>/…`. */
  agentPath(rest = ''): string {
    const { user, slug } = this.agent;
    return `users/${encodeURIComponent(user)}/agents/${encodeURIComponent(slug)}${rest}`;
  }

  session(): Promise<ISession> {
    if (!this._session) {
      this._session = openSession(this.base).catch(error => {
        this._session = null;
        throw error;
      });
    }
    return this._session;
  }

  url(path: string, query?: Record<string, string>): string {
    const clean = query
      ? Object.fromEntries(Object.entries(query).filter(([, v]) => v !== '' && v !== undefined && v !== null))
      : undefined;
    const qs = clean && Object.keys(clean).length ? URLExt.objectToQueryString(clean) : '';
    return `${this.base}api/${path}${qs}`;
  }

  async request<T>(
    method: string,
    path: string,
    body?: unknown,
    query?: Record<string, string>
  ): Promise<T> {
    for (let attempt = 0; ; attempt++) {
      const session = await this.session();
      const response = await fetch(this.url(path, query), {
        method,
        credentials: 'same-origin',
        headers: {
          'X-XSRFToken': session.xsrf,
          ...(body === undefined ? {} : { 'Content-Type': 'application/json' })
        },
        body: body === undefined ? undefined : JSON.stringify(body)
      });
      if (response.status === 401 && attempt === 0) {
        // The service's login expired: sign in again once.
        this._session = null;
        continue;
      }
      return jsonOf<T>(response);
    }
  }

  get<T>(path: string, query?: Record<string, string>): Promise<T> {
    return this.request<T>('GET', path, undefined, query);
  }

  // agents
  agentRecord(): Promise<any> {
    return this.get(this.agentPath());
  }
  agents(): Promise<{ agents: any[] }> {
    return this.get('agents');
  }
  updateAgent(body: Record<string, unknown>): Promise<any> {
    return this.request('PATCH', this.agentPath(), body);
  }
  usage(): Promise<any> {
    return this.get(this.agentPath('/usage'));
  }
  restart(): Promise<any> {
    return this.request('POST', this.agentPath('/restart'));
  }

  // skills
  skills(query: Record<string, string>): Promise<{ skills: any[]; next_cursor: string | null }> {
    return this.get('skills', query);
  }
  skill(id: string): Promise<any> {
    return this.get(`skills/${encodeURIComponent(id)}`);
  }
  createSkill(body: Record<string, unknown>): Promise<any> {
    return this.request('POST', 'skills', body);
  }
  updateSkill(id: string, body: Record<string, unknown>): Promise<any> {
    return this.request('PATCH', `skills/${encodeURIComponent(id)}`, body);
  }
  forkSkill(id: string, command?: string): Promise<any> {
    return this.request('POST', `skills/${encodeURIComponent(id)}/fork`, command ? { command } : {});
  }
  deleteSkill(id: string): Promise<void> {
    return this.request('DELETE', `skills/${encodeURIComponent(id)}`);
  }
  installed(): Promise<any> {
    return this.get(this.agentPath('/skills'));
  }
  install(skillId: string): Promise<any> {
    return this.request('POST', this.agentPath('/skills'), { skill_id: skillId });
  }
  uninstall(skillId: string): Promise<void> {
    return this.request('DELETE', this.agentPath(`/skills/${encodeURIComponent(skillId)}`));
  }

  // history
  historySessions(cursor?: string | null, limit = 20): Promise<{ sessions: any[]; next_cursor: string | null }> {
    return this.get(this.agentPath('/history/sessions'), { limit: String(limit), cursor: cursor ?? '' });
  }
  historyEvents(session: string, cursor?: string | null, limit = 200): Promise<{ events: any[]; next_cursor: string | null }> {
    return this.get(this.agentPath('/history/events'), { session, limit: String(limit), cursor: cursor ?? '' });
  }
  historyCsvUrl(session?: string): string {
    return this.url(this.agentPath('/history/export.csv'), session ? { session } : undefined);
  }

  // approvals
  pendingRequests(): Promise<{ requests: any[] }> {
    return this.get('hitl/requests', { status: 'pending', agent: this.agent.slug, limit: '100' });
  }
  decide(id: string, decision: 'allow' | 'deny', option?: string | null): Promise<any> {
    const body: Record<string, unknown> = { decision };
    if (option) {
      body.option = option;
    }
    return this.request('POST', `hitl/requests/${encodeURIComponent(id)}/decision`, body);
  }

  // workspace
  workspace(prefix?: string): Promise<any> {
    return this.get(this.agentPath('/workspace'), prefix ? { prefix } : undefined);
  }
  groupWorkspace(group: string): Promise<any> {
    return this.get(`groups/${encodeURIComponent(group)}/workspace`);
  }
}
