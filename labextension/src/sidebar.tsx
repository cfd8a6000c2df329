/**
 * The SAC sidebar: this agent, skills, workspace, history and approvals.
 * Each section loads what it shows from the service (as the user) or the
 * agent's own server, and approvals and new output arrive live as events.
 */

import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { startDownload } from './archives';
import { ErrorLine, Section, SmallButton, UsageBar, useLoad } from './components';
import { COMMANDS, ISacContext } from './context';
import {
  archiveName,
  agentOpenUrl,
  applyHitlEvent,
  applyOutputEvent,
  formatBytes,
  formatCount,
  formatTime,
  historyCapture,
  IArtifact,
  IHitlRequest,
  monthUsage,
  optionDecision,
  terminalScreen,
  sandboxFacts,
  secondsLeft,
  serverStatus,
  toolSummary,
  transcriptRows,
  usageNotes,
  utcMonth
} from './logic';
import { SkillsSection } from './skills';

// ---- Agent -------------------------------------------------------------------------

const USAGE_REFRESH_MS = 30000;

function AgentSection(props: { ctx: ISacContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const record = useLoad(() => ctx.service.agentRecord(), []);
  const usage = useLoad(() => ctx.service.usage(), []);
  const status = useLoad(() => ctx.ext.status(), []);
  const others = useLoad(() => ctx.service.agents(), []);
  const spool = useLoad(() => ctx.ext.historyStatus(), []);
  const [busy, setBusy] = React.useState(false);
  const [error, setError] = React.useState<unknown>(null);

  // Usage moves with every model call: refresh it while the sidebar is open.
  React.useEffect(() => {
    const timer = window.setInterval(() => {
      if (!document.hidden) {
        usage.reload();
        record.reload();
        spool.reload();
      }
    }, USAGE_REFRESH_MS);
    const onTurn = () => usage.reload();
    ctx.events.turnEnded.connect(onTurn);
    return () => {
      window.clearInterval(timer);
      ctx.events.turnEnded.disconnect(onTurn);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const agent = record.value;
  const resolved = agent?.resolved ?? {};
  const facts = sandboxFacts(agent?.sandbox_usage, resolved);
  const month = usage.value ? monthUsage(usage.value.days ?? [], utcMonth()) : null;
  const budget = usage.value?.budget?.agent;
  const capture = historyCapture(spool.value);

  const restart = async () => {
    const answer = await showDialog({
      title: trans.__('Restart %1?', agent?.display_name ?? ctx.agent.slug),
      body: trans.__(
        'The sandbox stops and starts again: running commands end, files in the workspace are kept. This page reopens once it is back.'
      ),
      buttons: [
        Dialog.cancelButton(),
        Dialog.warnButton({ label: trans.__('Restart') })
      ]
    });
    if (!answer.button.accept) {
      return;
    }
    setBusy(true);
    try {
      await ctx.app.commands.execute(COMMANDS.restart);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  const switchTo = (slug: string) => {
    if (slug && slug !== ctx.agent.slug) {
      window.location.assign(
        agentOpenUrl(ctx.agent.hubHost, ctx.agent.hubPrefix, ctx.agent.user, slug)
      );
    }
  };

  return (
    <Section
      id="agent"
      title={trans.__('Agent')}
      actions={
        <SmallButton
          label="↻"
          title={trans.__('Refresh')}
          onClick={() => {
            record.reload();
            usage.reload();
            others.reload();
            spool.reload();
          }}
        />
      }
    >
      <ErrorLine error={record.error || usage.error || error} />
      {capture.state === 'paused' ? (
        <div className="jp-SacError" role="alert" data-alert="capture-paused">
          {trans.__(
            "History capture is paused: %1. Claude's entries wait in its transcript and are captured once there is room again.",
            capture.reason
          )}
        </div>
      ) : null}
      <dl className="jp-SacFacts">
        <dt>{trans.__('Name')}</dt>
        <dd data-fact="name">{agent?.display_name ?? ctx.agent.slug}</dd>
        <dt>{trans.__('Model')}</dt>
        <dd data-fact="model">{agent?.model ?? status.value?.agent?.model ?? '—'}</dd>
        <dt>{trans.__('Provider')}</dt>
        <dd data-fact="provider">{agent?.provider ?? '—'}</dd>
        <dt>{trans.__('Sandbox')}</dt>
        <dd data-fact="status">
          {agent ? serverStatus(agent.server) : '—'}
          {status.value?.runtime?.version
            ? ` · claude ${status.value.runtime.version}`
            : ''}
        </dd>
        <dt>{trans.__('CPU')}</dt>
        <dd data-fact="cpu" title={trans.__('now / the limit that holds')}>
          {facts.cpu}
        </dd>
        <dt>{trans.__('Memory')}</dt>
        <dd data-fact="memory">{facts.memory}</dd>
        <dt>{trans.__('Processes')}</dt>
        <dd data-fact="processes">{facts.processes}</dd>
        <dt>{trans.__('Disk')}</dt>
        <dd data-fact="disk" title={trans.__('home and workspace / the disk limit')}>
          {facts.disk}
        </dd>
        <dt>{trans.__('Network')}</dt>
        <dd data-fact="network" title={trans.__('sent / received since it started')}>
          {facts.network}
        </dd>
        {usageNotes(agent?.sandbox_usage).map(note => (
          <dd key={note} data-fact="usage-note" className="jp-sac-usage-note">
            {note}
          </dd>
        ))}
        <dt>{trans.__('History')}</dt>
        <dd data-fact="history">
          {capture.state === 'paused'
            ? trans.__('paused: %1', capture.reason)
            : capture.state === 'waiting'
              ? trans._n(
                  '%1 entry waiting to upload',
                  '%1 entries waiting to upload',
                  capture.backlog
                )
              : capture.state === 'stored'
                ? trans.__('captured')
                : '—'}
        </dd>
        <dt>{trans.__('This month')}</dt>
        <dd data-fact="usage">
          {month
            ? trans.__(
                '%1 requests · %2 tokens',
                formatCount(month.requests),
                formatCount(month.tokens)
              )
            : '—'}
          {budget?.limit ? ` · ${trans.__('%1 left', formatCount(budget.left))}` : ''}
        </dd>
      </dl>
      <div className="jp-SacRow">
        <SmallButton
          label={trans.__('Claude Terminal')}
          onClick={() => void ctx.app.commands.execute(COMMANDS.terminal)}
        />
        <SmallButton
          label={trans.__('Chat')}
          onClick={() => void ctx.app.commands.execute(COMMANDS.chat)}
        />
        <SmallButton
          label={trans.__('Restart')}
          kind="warn"
          disabled={busy}
          onClick={() => void restart()}
        />
        <SmallButton
          label={trans.__('Settings…')}
          title={trans.__(
            'Change the model, API key, approvals policy or driving on the SAC service'
          )}
          onClick={() =>
            ctx.openServicePage(
              `agents/${encodeURIComponent(ctx.agent.user)}/${encodeURIComponent(ctx.agent.slug)}`
            )
          }
        />
        <SmallButton
          label={trans.__('New agent…')}
          title={trans.__(
            'Create another agent, from one of your templates, on your SAC home page'
          )}
          onClick={() => ctx.openServicePage('')}
        />
      </div>
      {others.value && others.value.agents.length > 1 ? (
        <label className="jp-SacField">
          <span>{trans.__('Switch to')}</span>
          <select
            className="jp-mod-styled"
            aria-label={trans.__('Switch to another agent')}
            value={ctx.agent.slug}
            onChange={e => switchTo(e.target.value)}
          >
            {others.value.agents.map((a: any) => (
              <option key={a.slug} value={a.slug}>
                {a.display_name} ({serverStatus(a.server)})
              </option>
            ))}
          </select>
        </label>
      ) : null}
    </Section>
  );
}

// ---- Workspace ---------------------------------------------------------------------------

function WorkspaceSection(props: { ctx: ISacContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const status = useLoad(() => ctx.ext.workspace(), []);
  const [groupUsage, setGroupUsage] = React.useState<Record<string, any>>({});
  const [artifacts, setArtifacts] = React.useState<IArtifact[]>([]);
  const [error, setError] = React.useState<unknown>(null);

  const groups: string[] = status.value?.groups ?? [];
  React.useEffect(() => {
    let live = true;
    Promise.all(
      groups.map(g =>
        ctx.service
          .groupWorkspace(g)
          .then(r => [g, r.usage] as const)
          .catch(() => [g, null] as const)
      )
    ).then(pairs => live && setGroupUsage(Object.fromEntries(pairs)));
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [groups.join('\n')]);

  // The store's view (usage against quota, what is in output/) is the service's;
  // new artifacts arrive as events, and usage is read again once they are stored.
  const stored = useLoad(() => ctx.service.workspace('output/'), []);
  React.useEffect(() => {
    const files = (stored.value?.files ?? []) as any[];
    files.sort((a, b) => String(b.mtime ?? '').localeCompare(String(a.mtime ?? '')));
    setArtifacts(current =>
      current.length
        ? current
        : files.slice(0, 20).map(f => ({
            path: f.path,
            size: f.size,
            action: 'stored',
            at: f.mtime ?? ''
          }))
    );
  }, [stored.value]);
  React.useEffect(() => {
    let timer = 0;
    const onOutput = (
      _: unknown,
      event: { action: string; path: string; size?: number | null }
    ) => {
      setArtifacts(current =>
        applyOutputEvent(current, event, new Date().toISOString())
      );
      window.clearTimeout(timer);
      timer = window.setTimeout(() => {
        stored.reload();
        status.reload();
      }, 2000);
    };
    ctx.events.output.connect(onOutput);
    return () => {
      window.clearTimeout(timer);
      ctx.events.output.disconnect(onOutput);
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const usage = stored.value?.usage ?? status.value?.usage ?? {};
  const sync = async () => {
    try {
      await ctx.ext.syncWorkspace();
      status.reload();
      stored.reload();
    } catch (e) {
      setError(e);
    }
  };
  const folders: [string, string][] = [
    ['private', trans.__('Private')],
    ['output', trans.__('Output')],
    ['public', trans.__('Public')],
    ...groups.map(g => [`group/${g}`, trans.__('Group %1', g)] as [string, string])
  ];

  return (
    <Section
      id="workspace"
      title={trans.__('Workspace')}
      actions={
        <SmallButton
          label="⟳"
          title={trans.__('Sync now')}
          onClick={() => void sync()}
        />
      }
    >
      <ErrorLine error={status.error || error || status.value?.last_error} />
      <UsageBar
        label={trans.__('Storage')}
        used={usage.bytes ?? 0}
        limit={usage.max_bytes}
        bytes
      />
      <UsageBar
        label={trans.__('Files')}
        used={usage.files ?? 0}
        limit={usage.max_files}
      />
      {groups.map(g =>
        groupUsage[g] ? (
          <UsageBar
            key={g}
            label={trans.__('Group %1', g)}
            used={groupUsage[g].bytes ?? 0}
            limit={groupUsage[g].max_bytes}
            bytes
          />
        ) : null
      )}
      <div className="jp-SacRow jp-SacFolders">
        {folders.map(([path, label]) => (
          <SmallButton
            key={path}
            label={label}
            title={`/workspace/${path}`}
            onClick={() => void ctx.showFolder(path)}
          />
        ))}
      </div>
      <div className="jp-SacRow jp-SacFolders" data-role="zip-downloads">
        <span className="jp-SacMuted">{trans.__('ZIP:')}</span>
        {[['', trans.__('All')] as [string, string], ...folders].map(
          ([path, label]) => (
            <SmallButton
              key={path || '/'}
              label={`⤓ ${label}`}
              title={trans.__('Download %1 as ZIP', `/workspace/${path}`)}
              onClick={() => startDownload(ctx.ext.archiveUrl(path), archiveName(path))}
            />
          )
        )}
      </div>
      {Object.keys(status.value?.errors ?? {}).length ? (
        <ul className="jp-SacList jp-SacRefused">
          {Object.entries(status.value.errors).map(([path, why]) => (
            <li key={path} title={String(why)}>
              {trans.__('Not stored: %1 (%2)', path, String(why))}
            </li>
          ))}
        </ul>
      ) : null}
      <h4 className="jp-SacSubhead">{trans.__('New output')}</h4>
      {artifacts.length ? (
        <ul className="jp-SacList jp-SacArtifacts">
          {artifacts.map(a => (
            <li key={a.path}>
              <button
                className="jp-SacLink"
                title={trans.__('Open %1', a.path)}
                onClick={() =>
                  void ctx.app.commands.execute('docmanager:open', { path: a.path })
                }
              >
                {a.path.replace(/^output\//, '')}
              </button>
              <span className="jp-SacMuted">{formatBytes(a.size)}</span>
            </li>
          ))}
        </ul>
      ) : (
        <p className="jp-SacMuted">
          {trans.__('Files the agent writes to output/ appear here.')}
        </p>
      )}
    </Section>
  );
}

// ---- History ------------------------------------------------------------------------------

function Transcript(props: {
  ctx: ISacContext;
  session: any;
  onBack: () => void;
}): JSX.Element {
  const { ctx, session } = props;
  const { trans } = ctx;
  const [events, setEvents] = React.useState<any[]>([]);
  const [cursor, setCursor] = React.useState<string | null>(null);
  const [error, setError] = React.useState<unknown>(null);
  const [loading, setLoading] = React.useState(false);

  const load = async (from: string | null) => {
    setLoading(true);
    try {
      const page = await ctx.service.historyEvents(session.session_id, from);
      setEvents(current => (from ? [...current, ...page.events] : page.events));
      setCursor(page.next_cursor);
    } catch (e) {
      setError(e);
    } finally {
      setLoading(false);
    }
  };
  React.useEffect(() => {
    void load(null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [session.session_id]);

  const rows = transcriptRows(events);
  return (
    <div className="jp-SacTranscript">
      <div className="jp-SacRow">
        <SmallButton label={trans.__('‹ Sessions')} onClick={props.onBack} />
        <a
          className="jp-SacLink"
          href={ctx.service.historyCsvUrl(session.session_id)}
          download
        >
          {trans.__('CSV')}
        </a>
      </div>
      <ErrorLine error={error} />
      {rows.map(row =>
        row.collapsed ? (
          <details key={row.key} className={`jp-SacTurn jp-mod-${row.role}`}>
            <summary>{row.title}</summary>
            <pre>{row.text}</pre>
          </details>
        ) : (
          <div key={row.key} className={`jp-SacTurn jp-mod-${row.role}`}>
            <div className="jp-SacTurn-who">
              {row.role === 'prompt' ? trans.__('You') : trans.__('Claude')}
              <span className="jp-SacMuted"> {formatTime(row.ts)}</span>
            </div>
            <div className="jp-SacTurn-text">{row.text}</div>
          </div>
        )
      )}
      {cursor ? (
        <SmallButton
          label={trans.__('More')}
          disabled={loading}
          onClick={() => void load(cursor)}
        />
      ) : null}
    </div>
  );
}

function HistorySection(props: { ctx: ISacContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const [sessions, setSessions] = React.useState<any[]>([]);
  const [cursor, setCursor] = React.useState<string | null>(null);
  const [open, setOpen] = React.useState<any | null>(null);
  const [error, setError] = React.useState<unknown>(null);

  const load = async (from: string | null) => {
    try {
      const page = await ctx.service.historySessions(
        from,
        ctx.preferences().historyPageSize
      );
      setSessions(current => (from ? [...current, ...page.sessions] : page.sessions));
      setCursor(page.next_cursor);
      setError(null);
    } catch (e) {
      setError(e);
    }
  };
  React.useEffect(() => {
    void load(null);
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  return (
    <Section
      id="history"
      title={trans.__('History')}
      defaultOpen={false}
      actions={
        <>
          <a
            className="jp-SacLink"
            href={ctx.service.historyCsvUrl()}
            download
            title={trans.__('Export all sessions as CSV')}
          >
            CSV
          </a>
          <SmallButton
            label="↻"
            title={trans.__('Refresh')}
            onClick={() => {
              setOpen(null);
              void load(null);
            }}
          />
        </>
      }
    >
      <ErrorLine error={error} />
      {open ? (
        <Transcript ctx={ctx} session={open} onBack={() => setOpen(null)} />
      ) : (
        <>
          {sessions.length ? (
            <ul className="jp-SacList jp-SacSessions">
              {sessions.map(s => (
                <li key={s.session_id}>
                  <button
                    className="jp-SacLink"
                    onClick={() => setOpen(s)}
                    title={s.first_prompt ?? ''}
                  >
                    {s.first_prompt || trans.__('(no prompt)')}
                  </button>
                  <span className="jp-SacMuted">
                    {formatTime(s.last_ts)} ·{' '}
                    {trans._n('%1 prompt', '%1 prompts', s.prompts ?? 0)} ·{' '}
                    {trans._n('%1 entry', '%1 entries', s.events ?? 0)}
                  </span>
                </li>
              ))}
            </ul>
          ) : (
            <p className="jp-SacMuted">{trans.__('No conversations yet.')}</p>
          )}
          {cursor ? (
            <SmallButton label={trans.__('More')} onClick={() => void load(cursor)} />
          ) : null}
        </>
      )}
    </Section>
  );
}

// ---- Approvals ------------------------------------------------------------------------------

function ApprovalsSection(props: {
  ctx: ISacContext;
  onCount: (n: number) => void;
}): JSX.Element {
  const { ctx, onCount } = props;
  const { trans } = ctx;
  const [pending, setPending] = React.useState<IHitlRequest[]>([]);
  const [error, setError] = React.useState<unknown>(null);
  // The notification shown for each request, taken away once it is decided.
  const notices = React.useRef(new Map<string, string>());
  const dismissNotice = (id: string) => {
    const notice = notices.current.get(id);
    if (notice) {
      Notification.dismiss(notice);
      notices.current.delete(id);
    }
  };

  // Requests are decided by the person on the service's own page (its origin, their
  // login), never from here: this page's scripts run with the sandbox's authority.
  const review = React.useCallback(
    (request: IHitlRequest) => {
      ctx.openServicePage(`approvals/${encodeURIComponent(request.id)}`);
    },
    [ctx]
  );

  const refresh = React.useCallback(async () => {
    try {
      const { requests } = await ctx.service.pendingRequests();
      setPending(requests);
      setError(null);
    } catch (e) {
      setError(e);
    }
  }, [ctx]);

  React.useEffect(() => {
    void refresh();
    const onHitl = (_: unknown, ev: { action: string; request: IHitlRequest }) => {
      setPending(current => applyHitlEvent(current, ev.action, ev.request));
      if (ev.action === 'requested' && ctx.preferences().notifyApprovals) {
        notices.current.set(
          ev.request.id,
          Notification.warning(
            trans.__(
              'Claude asks: %1',
              ev.request.question || ev.request.tool || trans.__('approval')
            ),
            {
              autoClose: 8000,
              actions: [
                { label: trans.__('Review'), callback: () => review(ev.request) }
              ]
            }
          )
        );
      } else if (ev.action !== 'requested') {
        dismissNotice(ev.request.id);
      }
      // the event carries the sandbox's view; the service's list is the truth
      void refresh();
    };
    ctx.events.hitl.connect(onHitl);
    return () => {
      ctx.events.hitl.disconnect(onHitl);
    };
  }, [ctx, refresh, review, trans]);

  React.useEffect(() => onCount(pending.length), [pending.length, onCount]);

  return (
    <Section
      id="approvals"
      title={trans.__('Approvals')}
      badge={pending.length}
      actions={
        <SmallButton
          label="↻"
          title={trans.__('Refresh')}
          onClick={() => void refresh()}
        />
      }
    >
      <ErrorLine error={error} />
      {pending.length ? (
        <ul className="jp-SacList jp-SacApprovals">
          {pending.map(r => {
            const left = secondsLeft(r.expires_at);
            return (
              <li key={r.id} className="jp-SacApproval" data-request={r.id}>
                <div className="jp-SacApproval-tool">
                  <strong>{r.tool ?? trans.__('Terminal prompt')}</strong>
                  {left !== null ? (
                    <span className="jp-SacMuted">
                      {' '}
                      · {trans.__('%1 s left', left)}
                    </span>
                  ) : null}
                </div>
                {r.question ? (
                  <div className="jp-SacApproval-question">{r.question}</div>
                ) : null}
                {r.tool && r.kind !== 'terminal' ? (
                  <code className="jp-SacApproval-input">
                    {toolSummary(r.tool, r.input)}
                  </code>
                ) : null}
                <details>
                  <summary>
                    {r.kind === 'terminal' ? trans.__('The screen') : trans.__('Input')}
                  </summary>
                  <pre>{terminalScreen(r) ?? JSON.stringify(r.input, null, 2)}</pre>
                </details>
                {r.kind === 'terminal' && r.options?.length ? (
                  <ol className="jp-SacApproval-options">
                    {r.options.map(o => (
                      <li
                        key={o.key}
                        value={/^\d+$/.test(o.key) ? Number(o.key) : undefined}
                        data-decision={optionDecision(o.label)}
                      >
                        {o.label}
                      </li>
                    ))}
                  </ol>
                ) : null}
                {r.text_max ? (
                  <p className="jp-SacMuted jp-SacApproval-text">
                    {trans.__(
                      'Or answer it with text (at most %1 characters), on the service.',
                      r.text_max
                    )}
                  </p>
                ) : null}
                <div className="jp-SacRow">
                  <SmallButton
                    label={trans.__('Review and decide…')}
                    kind="accept"
                    title={trans.__(
                      'Opens the request on the SAC service, where you approve or deny it'
                    )}
                    onClick={() => review(r)}
                  />
                </div>
              </li>
            );
          })}
        </ul>
      ) : (
        <p className="jp-SacMuted">{trans.__('Nothing waits for you.')}</p>
      )}
    </Section>
  );
}

// ---- the sidebar ----------------------------------------------------------------------------

export class SacSidebar extends ReactWidget {
  constructor(private readonly ctx: ISacContext) {
    super();
    this.id = 'jp-sac-sidebar';
    this.addClass('jp-SacSidebar');
    this.title.caption = this.caption;
  }

  private get caption(): string {
    return this.ctx.trans.__('SAC: agent, skills, workspace, history, approvals');
  }

  /** The pending approvals show as a badge on the sidebar's tab. */
  private setPending = (count: number): void => {
    this.title.dataset = { ...this.title.dataset, sacPending: String(count) };
    this.title.caption = count
      ? this.ctx.trans._n('%1 approval waits', '%1 approvals wait', count)
      : this.caption;
  };

  protected render(): JSX.Element {
    const { ctx } = this;
    return (
      <div className="jp-SacSidebar-content">
        <h2 className="jp-SacSidebar-heading">
          {ctx.trans.__('Agent %1', ctx.agent.slug)}
        </h2>
        <ApprovalsSection ctx={ctx} onCount={this.setPending} />
        <AgentSection ctx={ctx} />
        <SkillsSection ctx={ctx} />
        <WorkspaceSection ctx={ctx} />
        <HistorySection ctx={ctx} />
      </div>
    );
  }
}
