/**
 * Where the frontend's calls go. This page is served by the agent's own server, on
 * the agent's own origin, which the sandbox controls: it holds no more authority
 * than the sandbox does.
 *
 * - The agent's own Jupyter server (`sac/api/...`, the sandbox extension): the
 *   terminal, chat, installed skills and runs, workspace sync and previews.
 * - The `sac` service, through the extension's relay (`sac/api/service/...`), which
 *   adds this agent's token: the agent's record and usage, the marketplace, its
 *   history and its pending requests (read), installs, private skills, restart.
 * - What a person must do (decide a request, change settings or keys, share a
 *   skill) happens on the service's own pages, on the service's origin, which the
 *   sidebar opens in a new window (`servicePage`).
 */

import { PageConfig, URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

import { IHistoryStatus } from './logic';

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
}

export function currentAgent(): IAgentRef {
  const hubPrefix = PageConfig.getOption('hubPrefix') || '/hub/';
  return {
    user: PageConfig.getOption('hubUser'),
    slug: PageConfig.getOption('hubServerName'),
    hubPrefix,
    hubHost: PageConfig.getOption('hubHost') || ''
  };
}

// ---- the sandbox extension ----------------------------------------------------------

export class ExtensionClient {
  readonly settings = ServerConnection.makeSettings();

  url(path: string, query?: Record<string, string>): string {
    const url = URLExt.join(this.settings.baseUrl, 'sac/api', path);
    return query ? url + URLExt.objectToQueryString(query) : url;
  }

  async request<T>(
    path: string,
    init: RequestInit = {},
    query?: Record<string, string>
  ): Promise<T> {
    const response = await ServerConnection.makeRequest(
      this.url(path, query),
      init,
      this.settings
    );
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

  /** The history spool: backlog, last upload error, whether capture is paused. */
  historyStatus(): Promise<IHistoryStatus> {
    return this.request('history/status');
  }

  /** Start the agent's `claude` terminal if it is not running. */
  ensureTerminal(): Promise<{ name: string }> {
    return this.post('terminal');
  }

  restartTerminal(): Promise<{ name: string }> {
    return this.post('terminal/restart');
  }

  chatSend(
    message: string,
    sessionId: string | null
  ): Promise<{ session_id: string; turn_id: string }> {
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
    let url =
      URLExt.join(this.settings.wsUrl, 'sac/api/chat/events') +
      URLExt.objectToQueryString(query);
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
    return this.post(`skills/${encodeURIComponent(command)}/run`, {
      values,
      mode,
      session_id: sessionId
    });
  }

  workspace(): Promise<any> {
    return this.request('workspace');
  }

  syncWorkspace(): Promise<any> {
    return this.post('workspace');
  }

  /** Where a workspace folder downloads as a ZIP ('' for the whole workspace). */
  archiveUrl(folder: string): string {
    return this.url('workspace/archive', folder ? { path: folder } : undefined);
  }

  /** Unpack a ZIP into a workspace folder (409 `conflict` for existing files
   * unless ``overwrite``). */
  uploadArchive(folder: string, zip: Blob, overwrite: boolean): Promise<any> {
    return this.request(
      'workspace/archive',
      { method: 'POST', body: zip, headers: { 'Content-Type': 'application/zip' } },
      { path: folder, overwrite: String(overwrite) }
    );
  }

  hitl(): Promise<any> {
    return this.request('hitl');
  }
}

// ---- the sac service, through the extension's relay (as this agent) ----------------

export class ServiceClient {
  constructor(
    readonly agent: IAgentRef,
    readonly ext: ExtensionClient = new ExtensionClient()
  ) {}

  /** The agent's own API path under the service: `users/<u>/agents/<slug>/…`. */
  agentPath(rest = ''): string {
    const { user, slug } = this.agent;
    return `users/${encodeURIComponent(user)}/agents/${encodeURIComponent(slug)}${rest}`;
  }

  /** The relay's URL for a service API path (same origin: links and downloads work). */
  url(path: string, query?: Record<string, string>): string {
    const clean = query
      ? Object.fromEntries(
          Object.entries(query).filter(
            ([, v]) => v !== '' && v !== undefined && v !== null
          )
        )
      : undefined;
    return this.ext.url(
      `service/${path}`,
      clean && Object.keys(clean).length ? clean : undefined
    );
  }

  request<T>(
    method: string,
    path: string,
    body?: unknown,
    query?: Record<string, string>
  ): Promise<T> {
    const clean = query
      ? Object.fromEntries(
          Object.entries(query).filter(
            ([, v]) => v !== '' && v !== undefined && v !== null
          )
        )
      : undefined;
    return this.ext.request<T>(
      `service/${path}`,
      {
        method,
        body: body === undefined ? undefined : JSON.stringify(body),
        headers: body === undefined ? undefined : { 'Content-Type': 'application/json' }
      },
      clean && Object.keys(clean).length ? clean : undefined
    );
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
  usage(): Promise<any> {
    return this.get(this.agentPath('/usage'));
  }
  restart(): Promise<any> {
    return this.request('POST', this.agentPath('/restart'));
  }

  // skills
  skills(
    query: Record<string, string>
  ): Promise<{ skills: any[]; next_cursor: string | null }> {
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
    return this.request(
      'POST',
      `skills/${encodeURIComponent(id)}/fork`,
      command ? { command } : {}
    );
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
    return this.request(
      'DELETE',
      this.agentPath(`/skills/${encodeURIComponent(skillId)}`)
    );
  }
  /** Move an installed skill to `version`, the newest one the person was shown (the
   * service answers 409 version_changed if the skill has a newer one by now). */
  updateInstall(skillId: string, version: number): Promise<any> {
    return this.request(
      'POST',
      this.agentPath(`/skills/${encodeURIComponent(skillId)}/update`),
      { version }
    );
  }

  // history
  historySessions(
    cursor?: string | null,
    limit = 20
  ): Promise<{ sessions: any[]; next_cursor: string | null }> {
    return this.get(this.agentPath('/history/sessions'), {
      limit: String(limit),
      cursor: cursor ?? ''
    });
  }
  historyEvents(
    session: string,
    cursor?: string | null,
    limit = 200
  ): Promise<{ events: any[]; next_cursor: string | null }> {
    return this.get(this.agentPath('/history/events'), {
      session,
      limit: String(limit),
      cursor: cursor ?? ''
    });
  }
  historyCsvUrl(session?: string): string {
    return this.url(
      this.agentPath('/history/export.csv'),
      session ? { session } : undefined
    );
  }

  // approvals
  pendingRequests(): Promise<{ requests: any[] }> {
    return this.get('hitl/requests', {
      status: 'pending',
      agent: this.agent.slug,
      limit: '100'
    });
  }

  // workspace
  workspace(prefix?: string): Promise<any> {
    return this.get(this.agentPath('/workspace'), prefix ? { prefix } : undefined);
  }
  groupWorkspace(group: string): Promise<any> {
    return this.get(`groups/${encodeURIComponent(group)}/workspace`);
  }
}
