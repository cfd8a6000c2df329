import { describe, expect, it } from 'vitest';

import {
  archiveName,
  agentLabUrl,
  agentOpenUrl,
  applyHitlEvent,
  applyOutputEvent,
  checkParameters,
  checkValues,
  cleanParameters,
  emptyChat,
  enterSends,
  formatBytes,
  formatCount,
  formatTurnCost,
  historyCapture,
  IChatEvent,
  IHitlRequest,
  initialValues,
  isCommand,
  ISkillParameter,
  monthUsage,
  optionDecision,
  quotaLevel,
  quotaPercent,
  sandboxFacts,
  usageNotes,
  reduceChat,
  secondsLeft,
  serverStatus,
  serviceBase,
  servicePageUrl,
  terminalScreen,
  skillMatches,
  toolKind,
  toolSummary,
  transcriptRows,
  updateOffer
} from '../src/logic';

describe('where things are', () => {
  it('finds the service on its own host with subdomains', () => {
    expect(serviceBase('/hub/', 'http://localhost:8000')).toBe(
      'http://sac--service.localhost:8000/services/sac/'
    );
    expect(serviceBase('/hub/', 'https://jupyter.example.org')).toBe(
      'https://sac--service.jupyter.example.org/services/sac/'
    );
    expect(serviceBase('/jupyter/hub/', 'http://localhost:8000/')).toBe(
      'http://sac--service.localhost:8000/jupyter/services/sac/'
    );
  });

  it('finds the service beside the hub without subdomains, under any base URL', () => {
    expect(serviceBase('/hub/')).toBe('/services/sac/');
    expect(serviceBase('/jupyter/hub/', '')).toBe('/jupyter/services/sac/');
    expect(serviceBase('/jupyter/hub')).toBe('/jupyter/services/sac/');
    expect(serviceBase('')).toBe('/services/sac/');
  });

  it("builds another agent's JupyterLab URL on the hub's host, with escaped names", () => {
    expect(agentLabUrl('http://localhost:8000', '/hub/', 'ann', 'helper')).toBe(
      'http://localhost:8000/user/ann/helper/lab'
    );
    expect(agentLabUrl('', '/hub/', 'ann', 'helper')).toBe('/user/ann/helper/lab');
    expect(agentLabUrl('', '/base/hub/', 'a b', 'x')).toBe('/base/user/a%20b/x/lab');
  });

  it("opens another agent through the hub's spawn page, which starts it if needed", () => {
    expect(agentOpenUrl('http://localhost:8000', '/hub/', 'ann', 'spare')).toBe(
      'http://localhost:8000/hub/spawn/ann/spare?next=%2Fuser%2Fann%2Fspare%2Flab'
    );
    expect(agentOpenUrl('', '/hub/', 'ann', 'spare')).toBe(
      '/hub/spawn/ann/spare?next=%2Fuser%2Fann%2Fspare%2Flab'
    );
  });
});

describe('numbers people read', () => {
  it('formats bytes in binary units', () => {
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(1073741824)).toBe('1.0 GiB');
    expect(formatBytes(null)).toBe('—');
  });

  it('shortens counts', () => {
    expect(formatCount(999)).toBe('999');
    expect(formatCount(12345)).toBe('12.3k');
    expect(formatCount(1234567)).toBe('1.2M');
  });

  it('turns usage into a bar level, capped at 100', () => {
    expect(quotaPercent(50, 100)).toBe(50);
    expect(quotaPercent(150, 100)).toBe(100);
    expect(quotaPercent(5, null)).toBe(0);
    expect(quotaLevel(79.9)).toBe('ok');
    expect(quotaLevel(80)).toBe('warn');
    expect(quotaLevel(95)).toBe('full');
  });

  it("sums this month's requests and tokens only", () => {
    const days = [
      { day: '2026-02-28', requests: 9, input_tokens: 900 },
      {
        day: '2026-03-01',
        requests: 2,
        input_tokens: 100,
        output_tokens: 20,
        cache_read_input_tokens: 5
      },
      { day: '2026-03-02', requests: 1, output_tokens: 7 }
    ];
    expect(monthUsage(days, '2026-03')).toEqual({ requests: 3, tokens: 132 });
  });

  it('reads the hub server model', () => {
    expect(serverStatus(null)).toBe('stopped');
    expect(serverStatus({ pending: 'spawn' })).toBe('starting');
    expect(serverStatus({ pending: 'stop', ready: true })).toBe('stopping');
    expect(serverStatus({ ready: true })).toBe('running');
  });
});

describe('tools', () => {
  it('says what a call does in one line', () => {
    expect(toolSummary('Bash', { command: 'ls  -la\n/tmp' })).toBe('ls -la /tmp');
    expect(
      toolSummary('Write', { file_path: '/workspace/output/a.txt', content: 'x' })
    ).toBe('/workspace/output/a.txt');
    expect(toolSummary('mcp__x__y', { a: 1 })).toBe('{"a":1}');
    expect(toolSummary('Bash', { command: 'x'.repeat(300) })).toHaveLength(160);
    expect(toolKind('Edit')).toBe('file');
    expect(toolKind('Bash')).toBe('command');
    expect(toolKind('Grep')).toBe('search');
  });
});

describe('chat', () => {
  const ev = (
    seq: number,
    type: string,
    extra: Record<string, unknown> = {}
  ): IChatEvent => ({
    seq,
    session_id: 's1',
    turn_id: 't1',
    type,
    ...extra
  });

  const turn = [
    ev(1, 'turn_start', { message: 'list files' }),
    ev(2, 'session', { model: 'm' }),
    ev(3, 'text', { text: 'Let me look.' }),
    ev(4, 'tool_use', { id: 'tu1', name: 'Bash', input: { command: 'ls' } }),
    ev(5, 'todos', {
      todos: [{ content: 'look', status: 'in_progress', activeForm: 'Looking' }]
    }),
    ev(6, 'tool_result', { tool_use_id: 'tu1', content: 'a.txt', is_error: false }),
    ev(7, 'text', { text: 'There is **a.txt**.' }),
    ev(8, 'text', { text: 'Done.' }),
    ev(9, 'result', {
      usage: { input_tokens: 10, cache_read_input_tokens: 5, output_tokens: 3 },
      cost_usd: 0.0012,
      duration_ms: 2100
    }),
    ev(10, 'turn_end', { exit_code: 0 })
  ];

  it('builds the timeline: prompt, text, tool call with its result, merged text, cost', () => {
    let state = emptyChat('s1');
    for (const e of turn.slice(0, 6)) {
      state = reduceChat(state, e);
    }
    expect(state.running).toBe(true);
    expect(state.todos[0].activeForm).toBe('Looking');
    for (const e of turn.slice(6)) {
      state = reduceChat(state, e);
    }
    expect(state.running).toBe(false);
    expect(state.items.map(i => i.kind)).toEqual([
      'user',
      'text',
      'tool',
      'text',
      'result'
    ]);
    const tool = state.items[2];
    expect(tool.kind === 'tool' && tool.step.result).toBe('a.txt');
    const text = state.items[3];
    expect(text.kind === 'text' && text.text).toBe('There is **a.txt**.\n\nDone.');
    const result = state.items[4];
    expect(result.kind === 'result' && formatTurnCost(result.result)).toBe(
      '$0.0012 · 15 in / 3 out · 2.1 s'
    );
  });

  it('ignores replayed events and other sessions', () => {
    let state = emptyChat('s1');
    for (const e of turn) {
      state = reduceChat(state, e);
    }
    const again = turn.reduce(reduceChat, state);
    expect(again).toBe(state);
    const other = reduceChat(state, {
      ...ev(11, 'text', { text: 'x' }),
      session_id: 's2'
    });
    expect(other).toBe(state);
  });

  it('shows errors and cancellation', () => {
    let state = reduceChat(emptyChat(), ev(1, 'turn_start', { message: 'x' }));
    state = reduceChat(
      state,
      ev(2, 'error', { message: 'overloaded', retry: { attempt: 1 } })
    );
    state = reduceChat(state, ev(3, 'cancelled'));
    state = reduceChat(state, ev(4, 'turn_end', { exit_code: null }));
    expect(state.sessionId).toBe('s1');
    expect(state.items.map(i => i.kind)).toEqual(['user', 'error', 'cancelled']);
    expect(state.items[1].kind === 'error' && state.items[1].retrying).toBe(true);
  });

  it('sends on Enter, not on Shift+Enter or while composing', () => {
    expect(enterSends('Enter', { shiftKey: false })).toBe(true);
    expect(enterSends('Enter', { shiftKey: true })).toBe(false);
    expect(enterSends('Enter', { shiftKey: false, isComposing: true })).toBe(false);
    expect(enterSends('Enter', { shiftKey: false }, false)).toBe(false);
    expect(enterSends('a', { shiftKey: false })).toBe(false);
  });
});

describe('history transcript', () => {
  it('shows prompts and answers open, tool calls and results collapsed', () => {
    const rows = transcriptRows([
      {
        session_id: 's',
        uuid: 'u1',
        ts: '2026-03-01T10:00:00Z',
        kind: 'user',
        payload: { type: 'user', message: { role: 'user', content: 'hello' } }
      },
      {
        session_id: 's',
        uuid: 'u2',
        ts: '2026-03-01T10:00:01Z',
        kind: 'assistant',
        payload: {
          type: 'assistant',
          message: {
            content: [
              { type: 'text', text: 'Hi' },
              { type: 'tool_use', id: 't', name: 'Bash', input: { command: 'pwd' } }
            ]
          }
        }
      },
      {
        session_id: 's',
        uuid: 'u3',
        ts: '2026-03-01T10:00:02Z',
        kind: 'user',
        payload: {
          type: 'user',
          message: {
            content: [
              {
                type: 'tool_result',
                tool_use_id: 't',
                content: [{ type: 'text', text: '/workspace' }]
              }
            ]
          }
        }
      },
      {
        session_id: 's',
        uuid: 'u4',
        ts: '2026-03-01T10:00:03Z',
        kind: 'summary',
        payload: { type: 'summary', summary: 'A greeting' }
      },
      {
        session_id: 's',
        uuid: 'u5',
        ts: '2026-03-01T10:00:04Z',
        kind: 'queue-operation',
        payload: { type: 'queue-operation', content: 'hello' }
      },
      {
        session_id: 's',
        uuid: 'u6',
        ts: '2026-03-01T10:00:05Z',
        kind: 'user',
        payload: {
          type: 'user',
          isMeta: true,
          message: { content: [{ type: 'text', text: 'Caveat: local commands' }] }
        }
      },
      {
        session_id: 's',
        uuid: 'u7',
        ts: '2026-03-01T10:00:06Z',
        kind: 'user',
        payload: {
          type: 'user',
          message: {
            content: [{ type: 'text', text: '<system-reminder>env</system-reminder>' }]
          }
        }
      }
    ]);
    expect(rows.map(r => [r.role, r.collapsed])).toEqual([
      ['prompt', false],
      ['answer', false],
      ['tool', true],
      ['result', true],
      ['other', true],
      ['other', true],
      ['other', true]
    ]);
    expect(rows.slice(5).map(r => r.title)).toEqual(['Context', 'Context']);
    expect(rows[2].title).toBe('Bash: pwd');
    expect(rows[3].text).toBe('/workspace');
  });
});

describe('skills', () => {
  const params: ISkillParameter[] = [
    { name: 'file', type: 'text', required: true },
    { name: 'rows', type: 'number', min: 1, max: 100, default: 10 },
    { name: 'since', type: 'date' },
    { name: 'style', type: 'select', options: ['short', 'long'], default: 'short' }
  ];

  it('starts the form from the defaults', () => {
    expect(initialValues(params)).toEqual({
      file: '',
      rows: '10',
      since: '',
      style: 'short'
    });
  });

  it('checks values by type before they are sent', () => {
    const bad = checkValues(params, {
      file: ' ',
      rows: '500',
      since: '2026-13-45',
      style: 'medium'
    });
    expect(bad.errors).toEqual({
      file: 'required',
      rows: 'at most 100',
      since: 'not a date (YYYY-MM-DD)',
      style: 'one of short, long'
    });
    const good = checkValues(params, {
      file: 'a.csv',
      rows: '5',
      since: '2026-03-01',
      style: 'long'
    });
    expect(good.errors).toEqual({});
    expect(good.values).toEqual({
      file: 'a.csv',
      rows: 5,
      since: '2026-03-01',
      style: 'long'
    });
  });

  it('refuses bad parameter definitions in the editor', () => {
    const problems = checkParameters([
      { name: 'Bad Name', type: 'text' },
      { name: 'ok', type: 'select', options: [' '] },
      { name: 'n', type: 'number', min: 5, max: 1 },
      { name: 'n', type: 'text' }
    ]);
    expect(Object.keys(problems)).toEqual(['0', '1', '2', '3']);
    expect(problems[3]).toBe('n is used twice');
    expect(checkParameters(params)).toEqual({});
  });

  it('stores parameters without empty fields', () => {
    expect(
      cleanParameters([
        { name: ' n ', type: 'number', default: '3', min: null, max: 9, help: '' },
        { name: 's', type: 'select', options: [' a', '', 'b '] }
      ])
    ).toEqual([
      { name: 'n', type: 'number', required: false, default: 3, max: 9 },
      { name: 's', type: 'select', required: false, options: ['a', 'b'] }
    ]);
  });

  it('offers an update only to a newer version the owner may still see', () => {
    expect(
      updateOffer({ installed_version: 2, latest_version: 4, update_available: true })
    ).toBe(4);
    expect(
      updateOffer({ installed_version: 4, latest_version: 4, update_available: false })
    ).toBeNull();
    // no longer readable: no version announced, nothing offered
    expect(
      updateOffer({
        installed_version: 2,
        latest_version: null,
        update_available: false
      })
    ).toBeNull();
    expect(
      updateOffer({ installed_version: 5, latest_version: 4, update_available: true })
    ).toBeNull();
    expect(updateOffer(undefined)).toBeNull();
  });

  it('accepts kebab-case commands only', () => {
    expect(isCommand('draft-sql')).toBe(true);
    expect(isCommand('Draft')).toBe(false);
    expect(isCommand('a--b')).toBe(false);
    expect(isCommand('../x')).toBe(false);
  });
});

describe('approvals and output', () => {
  const req = (id: string, created: string, status = 'pending'): IHitlRequest => ({
    id,
    user: 'ann',
    agent: 'a',
    kind: 'tool',
    tool: 'Bash',
    input: {},
    question: null,
    options: [],
    status,
    created_at: created,
    expires_at: null
  });

  it("shows a terminal prompt's screen as text, and nothing for a tool call", () => {
    const prompt = {
      ...req('t', '2026-03-01T10:00:00Z'),
      kind: 'terminal',
      tool: 'claude',
      input: { screen: '❯ 1. Yes\n  2. No' }
    };
    expect(terminalScreen(prompt)).toBe('❯ 1. Yes\n  2. No');
    expect(terminalScreen(req('b', '2026-03-01T10:00:00Z'))).toBeNull();
    expect(terminalScreen({ ...prompt, input: { screen: 7 } })).toBeNull();
  });

  it('keeps the pending list newest first, without duplicates or decided ones', () => {
    let pending = applyHitlEvent([], 'requested', req('1', '2026-03-01T10:00:00Z'));
    pending = applyHitlEvent(pending, 'requested', req('2', '2026-03-01T10:01:00Z'));
    pending = applyHitlEvent(pending, 'requested', req('1', '2026-03-01T10:00:00Z'));
    expect(pending.map(r => r.id)).toEqual(['2', '1']);
    pending = applyHitlEvent(
      pending,
      'decided',
      req('2', '2026-03-01T10:01:00Z', 'approved')
    );
    expect(pending.map(r => r.id)).toEqual(['1']);
  });

  it('denies with the refusing options of a terminal prompt and allows with the others', () => {
    expect(
      [
        '1. Yes',
        'Yes, and do not ask again',
        'No, and tell Claude what to do differently',
        'Deny',
        'cancel'
      ].map(optionDecision)
    ).toEqual(['allow', 'allow', 'deny', 'deny', 'deny']);
  });

  it('finds a skill by the start of words of its command, title, tags or description', () => {
    const skill = {
      command: 'summarise-csv',
      title: 'Summarise a CSV',
      description: 'Columns and totals.',
      tags: ['reporting']
    };
    expect(
      ['', '  ', 'CSV', 'summarise-', 'totals', 'tot sum', '/summarise-csv', 'REP'].map(
        q => skillMatches(skill, q)
      )
    ).toEqual([true, true, true, true, true, true, true, true]);
    expect(
      ['pdf', 'ummarise', 'csv pdf', '%', "'"].map(q => skillMatches(skill, q))
    ).toEqual([false, false, false, false, false]);
    expect(skillMatches({ command: 'bare' }, 'bare')).toBe(true);
  });

  it('counts down to the timeout', () => {
    const now = new Date('2026-03-01T10:00:00Z');
    expect(secondsLeft('2026-03-01T10:01:00Z', now)).toBe(60);
    expect(secondsLeft('2026-03-01T09:00:00Z', now)).toBe(0);
    expect(secondsLeft(null, now)).toBeNull();
  });

  it('lists the newest artifacts once each and drops deleted ones', () => {
    let list = applyOutputEvent(
      [],
      { action: 'created', path: 'output/a.png', size: 10 },
      't1'
    );
    list = applyOutputEvent(
      list,
      { action: 'created', path: 'output/b.csv', size: 5 },
      't2'
    );
    list = applyOutputEvent(
      list,
      { action: 'modified', path: 'output/a.png', size: 12 },
      't3'
    );
    expect(list.map(a => [a.path, a.size])).toEqual([
      ['output/a.png', 12],
      ['output/b.csv', 5]
    ]);
    list = applyOutputEvent(list, { action: 'deleted', path: 'output/b.csv' }, 't4');
    expect(list.map(a => a.path)).toEqual(['output/a.png']);
    for (let i = 0; i < 30; i++) {
      list = applyOutputEvent(list, { action: 'created', path: `output/${i}` }, 't');
    }
    expect(list).toHaveLength(20);
  });
});

describe('servicePageUrl', () => {
  const base = 'http://sac--service.localhost:8000/services/sac/';

  it('puts a page under the service base', () => {
    expect(servicePageUrl(base, 'approvals/6f1c-9b2e')).toBe(
      `${base}approvals/6f1c-9b2e`
    );
    expect(servicePageUrl(base.slice(0, -1), 'agents/alice/a1')).toBe(
      `${base}agents/alice/a1`
    );
  });

  it('keeps encoded names encoded and never climbs out of the base', () => {
    expect(servicePageUrl(base, 'agents/a%2Fb/x')).toBe(`${base}agents/a%2Fb/x`);
    expect(servicePageUrl(base, '../../hub/admin')).toBe(`${base}hub/admin`);
    expect(servicePageUrl(base, 'skills/%2e%2e/%2E/7')).toBe(`${base}skills/7`);
    expect(servicePageUrl(base, 'skills/%zz')).toBe(`${base}skills/%25zz`);
  });
});

describe('usageNotes', () => {
  const base = {
    running: true,
    cpu_percent: null,
    memory_bytes: null,
    processes: null,
    disk_bytes: null,
    net_sent_bytes: null,
    net_received_bytes: null,
    limits: {}
  };

  it('says why live figures are missing and how often the server was restarted', () => {
    expect(usageNotes({ ...base, restarts: 2, unavailable: 'no metrics API' })).toEqual(
      [
        'its server crashed and was restarted 2 times since it started',
        'live figures unavailable: no metrics API'
      ]
    );
    expect(usageNotes({ ...base, restarts: 1 })).toEqual([
      'its server crashed and was restarted once since it started'
    ]);
  });

  it('says nothing for a healthy agent, a stopped one or none', () => {
    expect(usageNotes({ ...base, restarts: 0, unavailable: null })).toEqual([]);
    expect(usageNotes({ ...base, running: false, restarts: 3 })).toEqual([]);
    expect(usageNotes(null)).toEqual([]);
  });
});

describe('sandboxFacts', () => {
  const resolved = {
    cpu_limit: 0.5,
    mem_limit: 512 * 2 ** 20,
    max_processes: 64,
    disk_limit: 2 ** 30
  };

  it('shows use now beside the limits that hold, and says which do not', () => {
    const facts = sandboxFacts(
      {
        running: true,
        cpu_percent: 12.5,
        memory_bytes: 200 * 2 ** 20,
        processes: 14,
        disk_bytes: 3 * 2 ** 20,
        net_sent_bytes: 2048,
        net_received_bytes: 3 * 2 ** 20,
        limits: { cpu: 0.5, memory: null, processes: 64, disk: 2 ** 30 }
      },
      resolved
    );
    expect(facts).toEqual({
      cpu: '12.5% / 0.5 CPUs',
      memory: '200 MiB / not enforced',
      processes: '14 / 64',
      disk: '3.0 MiB / 1.0 GiB',
      network: '↑ 2.0 KiB ↓ 3.0 MiB'
    });
  });

  it('before a sample, or stopped, shows what the settings ask for and the last disk use', () => {
    expect(sandboxFacts(null, resolved).cpu).toBe('— / 0.5 CPUs (at start)');
    const stopped = sandboxFacts(
      {
        running: false,
        cpu_percent: null,
        memory_bytes: null,
        processes: null,
        disk_bytes: 2 * 2 ** 30,
        net_sent_bytes: null,
        net_received_bytes: null,
        limits: {}
      },
      resolved
    );
    expect(stopped.disk).toBe(
      '2.0 GiB / 1.0 GiB (over the limit: it will not start again)'
    );
    expect(stopped.network).toBe('—');
  });
});

describe('historyCapture', () => {
  it('says capture is paused and why, before anything else', () => {
    expect(
      historyCapture({
        backlog: 3,
        last_error: null,
        capture_paused: 'No space left on device'
      })
    ).toEqual({ state: 'paused', reason: 'No space left on device' });
  });

  it('counts what waits for the service, else says all is stored', () => {
    expect(
      historyCapture({ backlog: 3, last_error: 'HTTP 503', capture_paused: null })
    ).toEqual({ state: 'waiting', backlog: 3 });
    expect(
      historyCapture({ backlog: 0, last_error: null, capture_paused: null })
    ).toEqual({
      state: 'stored'
    });
    expect(historyCapture(null)).toEqual({ state: 'unknown' });
  });
});

describe('archiveName', () => {
  it('names a download after the folder, or the workspace', () => {
    expect(archiveName('output/q3')).toBe('q3.zip');
    expect(archiveName('group/analysts/Résumé/')).toBe('Résumé.zip');
    expect(archiveName('')).toBe('workspace.zip');
  });
});
