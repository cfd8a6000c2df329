/**
 * The chat panel: one Claude Code conversation of this agent, turn by turn.
 * Answers stream in from the extension's chat websocket; tool calls form a
 * timeline (collapsed, with their results), the todo list and the turn's cost
 * show as they change. The same agent's terminal is one click away.
 */

import { ReactWidget } from '@jupyterlab/ui-components';
import * as React from 'react';

import { ErrorLine, Markdown, SmallButton } from './components';
import { COMMANDS, ISacContext } from './context';
import {
  ChatItem,
  emptyChat,
  enterSends,
  formatTime,
  formatTurnCost,
  IChatEvent,
  IChatState,
  reduceChat
} from './logic';

const KIND_ICON: Record<string, string> = {
  command: '$',
  file: '📄',
  search: '🔎',
  web: '🌐',
  other: '⚙'
};

function Timeline(props: { ctx: ISacContext; items: ChatItem[] }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  return (
    <div className="jp-SacChat-log" role="log" aria-live="polite">
      {props.items.map(item => {
        switch (item.kind) {
          case 'user':
            return (
              <div key={item.key} className="jp-SacChat-user">
                <div className="jp-SacChat-who">{trans.__('You')}</div>
                <div className="jp-SacChat-text">{item.text}</div>
              </div>
            );
          case 'text':
            return (
              <div key={item.key} className="jp-SacChat-answer">
                <Markdown text={item.text} rendermime={ctx.rendermime} />
              </div>
            );
          case 'thinking':
            return (
              <details key={item.key} className="jp-SacChat-thinking">
                <summary>{trans.__('Thinking')}</summary>
                <pre>{item.text}</pre>
              </details>
            );
          case 'tool':
            return (
              <details
                key={item.key}
                className={`jp-SacChat-tool jp-mod-${item.step.kind}${item.step.isError ? ' jp-mod-error' : ''}${item.step.result === null ? ' jp-mod-running' : ''}`}
                data-tool={item.step.name}
              >
                <summary>
                  <span className="jp-SacChat-toolIcon" aria-hidden="true">
                    {KIND_ICON[item.step.kind]}
                  </span>
                  <strong>{item.step.name}</strong> <code>{item.step.summary}</code>
                  {item.step.result === null ? (
                    <span className="jp-SacMuted"> {trans.__('running…')}</span>
                  ) : null}
                </summary>
                <pre className="jp-SacChat-toolInput">
                  {JSON.stringify(item.step.input, null, 2)}
                </pre>
                {item.step.result !== null ? (
                  <pre className="jp-SacChat-toolResult">{item.step.result}</pre>
                ) : null}
              </details>
            );
          case 'error':
            return (
              <div key={item.key} className="jp-SacError" role="alert">
                {item.retrying ? trans.__('Retrying: %1', item.text) : item.text}
              </div>
            );
          case 'result':
            return (
              <div key={item.key} className="jp-SacChat-cost" data-cost>
                {formatTurnCost(item.result)}
              </div>
            );
          case 'cancelled':
            return (
              <div key={item.key} className="jp-SacMuted">
                {trans.__('Cancelled.')}
              </div>
            );
        }
      })}
    </div>
  );
}

function ChatView(props: {
  ctx: ISacContext;
  initialSession: string | null;
  panel: ChatPanel;
}): JSX.Element {
  const { ctx, panel } = props;
  const { trans } = ctx;
  const [chat, setChat] = React.useState<IChatState>(() =>
    emptyChat(props.initialSession)
  );
  const [sessions, setSessions] = React.useState<any[]>([]);
  const [draft, setDraft] = React.useState('');
  const [error, setError] = React.useState<unknown>(null);
  const [sending, setSending] = React.useState(false);
  const socket = React.useRef<WebSocket | null>(null);
  const lastSeq = React.useRef(0);
  const logEnd = React.useRef<HTMLDivElement>(null);

  const loadSessions = React.useCallback(() => {
    ctx.ext.chatSessions().then(r => setSessions(r.sessions), setError);
  }, [ctx]);

  // Each follow() starts a generation; a socket of an older one never reconnects.
  const generation = React.useRef(0);

  /** Follow one session's events: replay from the start, then live ones. */
  const follow = React.useCallback(
    (sessionId: string | null) => {
      const gen = ++generation.current;
      socket.current?.close();
      socket.current = null;
      lastSeq.current = 0;
      setChat(emptyChat(sessionId));
      panel.sessionId = sessionId;
      if (!sessionId) {
        return;
      }
      const open = () => {
        if (gen !== generation.current) {
          return;
        }
        const ws = ctx.ext.chatSocket(sessionId, lastSeq.current);
        socket.current = ws;
        ws.onmessage = msg => {
          const event = JSON.parse(String(msg.data)) as IChatEvent;
          lastSeq.current = Math.max(lastSeq.current, event.seq);
          setChat(state => reduceChat(state, event));
          if (event.type === 'turn_end') {
            loadSessions();
            ctx.events.endedTurn(event.session_id);
          }
        };
        ws.onclose = () => {
          if (gen === generation.current) {
            // reconnect from the last event seen: the server replays what was missed
            window.setTimeout(open, 1000);
          }
        };
      };
      open();
    },
    [ctx, panel, loadSessions]
  );

  React.useEffect(() => {
    loadSessions();
    follow(props.initialSession);
    const onStarted = (_: unknown, id: string) => follow(id);
    ctx.events.sessionStarted.connect(onStarted);
    return () => {
      ctx.events.sessionStarted.disconnect(onStarted);
      // a counter, not a DOM node: bumping it on unmount makes late replies stale
      // eslint-disable-next-line react-hooks/exhaustive-deps
      generation.current++;
      socket.current?.close();
      socket.current = null;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, []);

  const lastItem = chat.items[chat.items.length - 1];
  React.useEffect(() => {
    logEnd.current?.scrollIntoView?.({ block: 'end' });
  }, [chat.items.length, lastItem]);

  const send = async () => {
    const message = draft.trim();
    if (!message || sending) {
      return;
    }
    setSending(true);
    try {
      const answer = await ctx.ext.chatSend(message, chat.sessionId);
      setDraft('');
      setError(null);
      if (answer.session_id !== chat.sessionId) {
        follow(answer.session_id);
      }
      loadSessions();
    } catch (e) {
      setError(e);
    } finally {
      setSending(false);
    }
  };

  const cancel = async () => {
    if (chat.sessionId) {
      try {
        await ctx.ext.chatCancel(chat.sessionId);
      } catch (e) {
        setError(e);
      }
    }
  };

  const onKeyDown = (e: React.KeyboardEvent<HTMLTextAreaElement>) => {
    if (
      enterSends(
        e.key,
        { shiftKey: e.shiftKey, isComposing: e.nativeEvent.isComposing },
        ctx.preferences().enterSends
      )
    ) {
      e.preventDefault();
      void send();
    }
  };

  return (
    <div className="jp-SacChat">
      <div className="jp-SacChat-toolbar">
        <select
          className="jp-mod-styled"
          aria-label={trans.__('Conversation')}
          value={chat.sessionId ?? ''}
          onChange={e => follow(e.target.value || null)}
        >
          <option value="">{trans.__('New conversation')}</option>
          {sessions.map(s => (
            <option key={s.session_id} value={s.session_id}>
              {s.title} · {formatTime(s.updated_at)}
            </option>
          ))}
        </select>
        <SmallButton label={trans.__('New')} onClick={() => follow(null)} />
        <span className="jp-SacChat-spacer" />
        <SmallButton
          label={trans.__('Terminal')}
          title={trans.__('Work with this agent in the Claude terminal instead')}
          onClick={() => void ctx.app.commands.execute(COMMANDS.terminal)}
        />
      </div>
      <div className="jp-SacChat-main">
        <Timeline ctx={ctx} items={chat.items} />
        {chat.todos.length ? (
          <aside className="jp-SacChat-todos" aria-label={trans.__('Todo list')}>
            <h4>{trans.__('Todo')}</h4>
            <ul>
              {chat.todos.map((t, i) => (
                <li key={i} className={`jp-mod-${t.status}`}>
                  <span aria-hidden="true">
                    {t.status === 'completed'
                      ? '☑'
                      : t.status === 'in_progress'
                        ? '▶'
                        : '☐'}
                  </span>{' '}
                  {t.status === 'in_progress' && t.activeForm
                    ? t.activeForm
                    : t.content}
                </li>
              ))}
            </ul>
          </aside>
        ) : null}
        <div ref={logEnd} />
      </div>
      <ErrorLine error={error} />
      <div className="jp-SacChat-input">
        <textarea
          className="jp-mod-styled"
          aria-label={trans.__('Message to Claude')}
          placeholder={trans.__(
            'Ask Claude… (Enter sends, Shift+Enter for a new line)'
          )}
          rows={3}
          value={draft}
          onChange={e => setDraft(e.target.value)}
          onKeyDown={onKeyDown}
        />
        {chat.running ? (
          <SmallButton
            label={trans.__('Cancel')}
            kind="reject"
            onClick={() => void cancel()}
          />
        ) : (
          <SmallButton
            label={trans.__('Send')}
            kind="accept"
            disabled={sending || !draft.trim()}
            onClick={() => void send()}
          />
        )}
      </div>
    </div>
  );
}

export class ChatPanel extends ReactWidget {
  /** The conversation shown (null: a new one starts with the next message). */
  sessionId: string | null;

  constructor(
    private readonly ctx: ISacContext,
    initialSession: string | null = null
  ) {
    super();
    this.sessionId = initialSession;
    this.id = 'jp-sac-chat';
    this.addClass('jp-SacChatPanel');
    this.title.label = ctx.trans.__('Claude Chat');
    this.title.closable = true;
  }

  protected render(): JSX.Element {
    return <ChatView ctx={this.ctx} initialSession={this.sessionId} panel={this} />;
  }
}
