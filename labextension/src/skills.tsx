/** The sidebar's Skills section: marketplace, install, create/edit, fork, share, run. */

import { Notification } from '@jupyterlab/apputils';
import * as React from 'react';

import { ErrorLine, FormFooter, Section, SmallButton } from './components';
import { COMMANDS, ISacContext } from './context';
import {
  checkParameters,
  checkValues,
  cleanParameters,
  initialValues,
  IInstalledSkill,
  isCommand,
  ISkillParameter,
  ParamType,
  skillMatches,
  updateOffer
} from './logic';

// '' is every tier; 'installed' lists this agent's installed skills.
const TIERS = ['', 'installed', 'official', 'public', 'group', 'private'];
const PARAM_TYPES: ParamType[] = ['text', 'number', 'date', 'select'];

type View =
  { kind: 'list' } | { kind: 'edit'; skill: any | null } | { kind: 'run'; skill: any };

// ---- run with a generated form -----------------------------------------------------------

function RunForm(props: {
  ctx: ISacContext;
  skill: any;
  onDone: () => void;
}): JSX.Element {
  const { ctx, skill } = props;
  const { trans } = ctx;
  const params: ISkillParameter[] = skill.parameters ?? [];
  const [raw, setRaw] = React.useState<Record<string, string>>(() =>
    initialValues(params)
  );
  const [errors, setErrors] = React.useState<Record<string, string>>({});
  const [mode, setMode] = React.useState<'chat' | 'terminal'>('chat');
  const [error, setError] = React.useState<unknown>(null);
  const [busy, setBusy] = React.useState(false);

  const run = async (event: React.FormEvent) => {
    event.preventDefault();
    const checked = checkValues(params, raw);
    setErrors(checked.errors);
    if (Object.keys(checked.errors).length) {
      return;
    }
    setBusy(true);
    try {
      const answer = await ctx.ext.runSkill(skill.command, checked.values, mode);
      if (mode === 'chat' && answer.session_id) {
        await ctx.app.commands.execute(COMMANDS.chat, { sessionId: answer.session_id });
      } else {
        await ctx.app.commands.execute(COMMANDS.terminal);
      }
      Notification.success(trans.__('Running /%1', skill.command), { autoClose: 3000 });
      props.onDone();
    } catch (e: any) {
      if (e?.field?.startsWith('values.')) {
        setErrors({ [e.field.slice(7)]: e.message });
      }
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form
      className="jp-SacForm"
      onSubmit={e => void run(e)}
      aria-label={trans.__('Run %1', skill.command)}
    >
      <h4 className="jp-SacSubhead">/{skill.command}</h4>
      <p className="jp-SacMuted">{skill.description}</p>
      {params.map(p => (
        <label key={p.name} className="jp-SacField">
          <span>
            {p.name}
            {p.required ? ' *' : ''}
          </span>
          {p.type === 'select' ? (
            <select
              className="jp-mod-styled"
              name={p.name}
              value={raw[p.name] ?? ''}
              onChange={e => setRaw({ ...raw, [p.name]: e.target.value })}
            >
              <option value="">—</option>
              {(p.options ?? []).map(o => (
                <option key={o} value={o}>
                  {o}
                </option>
              ))}
            </select>
          ) : (
            <input
              className="jp-mod-styled"
              name={p.name}
              type={
                p.type === 'number' ? 'number' : p.type === 'date' ? 'date' : 'text'
              }
              min={p.min ?? undefined}
              max={p.max ?? undefined}
              value={raw[p.name] ?? ''}
              onChange={e => setRaw({ ...raw, [p.name]: e.target.value })}
            />
          )}
          {p.help ? <small className="jp-SacMuted">{p.help}</small> : null}
          {errors[p.name] ? (
            <small className="jp-SacError">{errors[p.name]}</small>
          ) : null}
        </label>
      ))}
      <label className="jp-SacField">
        <span>{trans.__('Run in')}</span>
        <select
          className="jp-mod-styled"
          value={mode}
          onChange={e => setMode(e.target.value as 'chat' | 'terminal')}
        >
          <option value="chat">{trans.__('Chat')}</option>
          <option value="terminal">{trans.__('Claude Terminal')}</option>
        </select>
      </label>
      <FormFooter
        trans={trans}
        error={error}
        submitLabel={trans.__('Run')}
        busy={busy}
        onCancel={props.onDone}
      />
    </form>
  );
}

// ---- create and edit -----------------------------------------------------------------------

function ParameterEditor(props: {
  ctx: ISacContext;
  params: ISkillParameter[];
  onChange: (params: ISkillParameter[]) => void;
}): JSX.Element {
  const { trans } = props.ctx;
  const problems = checkParameters(props.params);
  const set = (i: number, change: Partial<ISkillParameter>) =>
    props.onChange(props.params.map((p, j) => (j === i ? { ...p, ...change } : p)));
  return (
    <fieldset className="jp-SacParams">
      <legend>{trans.__('Parameters')}</legend>
      {props.params.map((p, i) => (
        <div key={i} className="jp-SacParam" data-param={i}>
          <div className="jp-SacRow">
            <input
              className="jp-mod-styled"
              aria-label={trans.__('Parameter name')}
              placeholder={trans.__('name')}
              value={p.name}
              onChange={e => set(i, { name: e.target.value })}
            />
            <select
              className="jp-mod-styled"
              aria-label={trans.__('Parameter type')}
              value={p.type}
              onChange={e => set(i, { type: e.target.value as ParamType })}
            >
              {PARAM_TYPES.map(t => (
                <option key={t} value={t}>
                  {t}
                </option>
              ))}
            </select>
            <label className="jp-SacCheck">
              <input
                type="checkbox"
                checked={Boolean(p.required)}
                onChange={e => set(i, { required: e.target.checked })}
              />
              {trans.__('required')}
            </label>
            <SmallButton
              label="✕"
              title={trans.__('Remove parameter')}
              onClick={() => props.onChange(props.params.filter((_, j) => j !== i))}
            />
          </div>
          <input
            className="jp-mod-styled"
            aria-label={trans.__('Help')}
            placeholder={trans.__('help text')}
            value={p.help ?? ''}
            onChange={e => set(i, { help: e.target.value })}
          />
          <input
            className="jp-mod-styled"
            aria-label={trans.__('Default')}
            placeholder={trans.__('default')}
            value={
              p.default === undefined || p.default === null ? '' : String(p.default)
            }
            onChange={e => set(i, { default: e.target.value })}
          />
          {p.type === 'select' ? (
            <input
              className="jp-mod-styled"
              aria-label={trans.__('Options')}
              placeholder={trans.__('options, comma separated')}
              value={(p.options ?? []).join(', ')}
              onChange={e => set(i, { options: e.target.value.split(',') })}
            />
          ) : null}
          {p.type === 'number' ? (
            <div className="jp-SacRow">
              {(['min', 'max'] as const).map(bound => (
                <input
                  key={bound}
                  className="jp-mod-styled"
                  type="number"
                  aria-label={
                    bound === 'min' ? trans.__('Minimum') : trans.__('Maximum')
                  }
                  placeholder={bound}
                  value={p[bound] ?? ''}
                  onChange={e =>
                    set(i, {
                      [bound]: e.target.value === '' ? null : Number(e.target.value)
                    })
                  }
                />
              ))}
            </div>
          ) : null}
          {problems[i] ? <small className="jp-SacError">{problems[i]}</small> : null}
        </div>
      ))}
      <SmallButton
        label={trans.__('+ Parameter')}
        disabled={props.params.length >= 20}
        onClick={() =>
          props.onChange([...props.params, { name: '', type: 'text', required: false }])
        }
      />
    </fieldset>
  );
}

function SkillEditor(props: {
  ctx: ISacContext;
  skill: any | null;
  onDone: (saved: any | null) => void;
}): JSX.Element {
  const { ctx, skill } = props;
  const { trans } = ctx;
  const [command, setCommand] = React.useState(skill?.command ?? '');
  const [title, setTitle] = React.useState(skill?.title ?? '');
  const [description, setDescription] = React.useState(skill?.description ?? '');
  const [body, setBody] = React.useState(skill?.body ?? '');
  const [prompt, setPrompt] = React.useState(skill?.prompt ?? '');
  const [params, setParams] = React.useState<ISkillParameter[]>(
    skill?.parameters ?? []
  );
  const [error, setError] = React.useState<unknown>(null);
  const [busy, setBusy] = React.useState(false);

  const save = async (event: React.FormEvent) => {
    event.preventDefault();
    if (!skill && !isCommand(command)) {
      setError(
        new Error(
          trans.__('command: lowercase letters, digits and single hyphens (kebab-case)')
        )
      );
      return;
    }
    if (Object.keys(checkParameters(params)).length) {
      setError(new Error(trans.__('fix the parameters first')));
      return;
    }
    const fields: Record<string, unknown> = {
      title,
      description,
      body,
      prompt,
      parameters: cleanParameters(params)
    };
    setBusy(true);
    try {
      const saved = skill
        ? await ctx.service.updateSkill(skill.id, fields)
        : await ctx.service.createSkill({ command, ...fields });
      Notification.success(trans.__('Skill /%1 saved', saved.command), {
        autoClose: 3000
      });
      props.onDone(saved);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };

  return (
    <form
      className="jp-SacForm"
      onSubmit={e => void save(e)}
      aria-label={trans.__('Edit skill')}
    >
      <h4 className="jp-SacSubhead">
        {skill ? trans.__('Edit /%1', skill.command) : trans.__('New skill')}
      </h4>
      {skill ? null : (
        <label className="jp-SacField">
          <span>{trans.__('Command')}</span>
          <input
            className="jp-mod-styled"
            name="command"
            value={command}
            placeholder="draft-report"
            onChange={e => setCommand(e.target.value)}
          />
        </label>
      )}
      <label className="jp-SacField">
        <span>{trans.__('Title')}</span>
        <input
          className="jp-mod-styled"
          name="title"
          value={title}
          onChange={e => setTitle(e.target.value)}
        />
      </label>
      <label className="jp-SacField">
        <span>{trans.__('Description')}</span>
        <input
          className="jp-mod-styled"
          name="description"
          value={description}
          onChange={e => setDescription(e.target.value)}
        />
      </label>
      <label className="jp-SacField">
        <span>{trans.__('Instructions (SKILL.md)')}</span>
        <textarea
          className="jp-mod-styled"
          name="body"
          rows={8}
          value={body}
          onChange={e => setBody(e.target.value)}
        />
      </label>
      <label className="jp-SacField">
        <span>{trans.__('Request, with {{parameter}} placeholders')}</span>
        <textarea
          className="jp-mod-styled"
          name="prompt"
          rows={3}
          value={prompt}
          onChange={e => setPrompt(e.target.value)}
        />
      </label>
      <ParameterEditor ctx={ctx} params={params} onChange={setParams} />
      <p className="jp-SacMuted">
        {trans.__(
          'Skills made here are private. Share one with a group or everyone from its page on the SAC service (Share…).'
        )}
      </p>
      <FormFooter
        trans={trans}
        error={error}
        submitLabel={trans.__('Save')}
        busy={busy}
        onCancel={() => props.onDone(null)}
      />
    </form>
  );
}

// ---- the marketplace ---------------------------------------------------------------------

export function SkillsSection(props: { ctx: ISacContext }): JSX.Element {
  const { ctx } = props;
  const { trans } = ctx;
  const [view, setView] = React.useState<View>({ kind: 'list' });
  const [query, setQuery] = React.useState('');
  const [tier, setTier] = React.useState('');
  const [skills, setSkills] = React.useState<any[]>([]);
  const [cursor, setCursor] = React.useState<string | null>(null);
  // This agent's installs by skill id, as pinned (content of the installed version).
  const [installed, setInstalled] = React.useState<Map<string, any>>(new Map());
  const [error, setError] = React.useState<unknown>(null);
  const [working, setWorking] = React.useState<string | null>(null);

  const load = React.useCallback(
    async (from: string | null) => {
      try {
        if (tier === 'installed') {
          const mine = await ctx.service.installed();
          setSkills((mine.skills ?? []).filter((s: any) => skillMatches(s, query)));
          setCursor(null);
          setInstalled(new Map((mine.skills ?? []).map((s: any) => [s.id, s])));
          setError(null);
          return;
        }
        const [page, mine] = await Promise.all([
          ctx.service.skills({ q: query, tier, limit: '25', cursor: from ?? '' }),
          from ? Promise.resolve(null) : ctx.service.installed()
        ]);
        setSkills(current => (from ? [...current, ...page.skills] : page.skills));
        setCursor(page.next_cursor);
        if (mine) {
          setInstalled(new Map((mine.skills ?? []).map((s: any) => [s.id, s])));
        }
        setError(null);
      } catch (e) {
        setError(e);
      }
    },
    [ctx, query, tier]
  );

  React.useEffect(() => {
    const timer = window.setTimeout(() => void load(null), 250);
    return () => window.clearTimeout(timer);
  }, [load]);

  // An edit starts from the skill's newest version: the installed view lists the
  // versions this agent has pinned, and saving an older one over the newest would
  // silently undo the edits made since.
  const edit = async (skill: any) => {
    setWorking(skill.id);
    try {
      setView({ kind: 'edit', skill: await ctx.service.skill(skill.id) });
    } catch (e) {
      setError(e);
    } finally {
      setWorking(null);
    }
  };

  const act = async (skill: any, what: () => Promise<unknown>, sync = false) => {
    setWorking(skill.id);
    try {
      await what();
      if (sync) {
        // the agent writes its skills now, not at its next poll
        await ctx.ext.syncSkills();
      }
      await load(null);
    } catch (e) {
      setError(e);
    } finally {
      setWorking(null);
    }
  };

  if (view.kind === 'run') {
    return (
      <Section id="skills" title={trans.__('Skills')}>
        <RunForm
          ctx={ctx}
          skill={view.skill}
          onDone={() => setView({ kind: 'list' })}
        />
      </Section>
    );
  }
  if (view.kind === 'edit') {
    return (
      <Section id="skills" title={trans.__('Skills')}>
        <SkillEditor
          ctx={ctx}
          skill={view.skill}
          onDone={() => {
            setView({ kind: 'list' });
            void load(null);
          }}
        />
      </Section>
    );
  }

  return (
    <Section
      id="skills"
      title={trans.__('Skills')}
      actions={
        <SmallButton
          label={trans.__('+ New')}
          title={trans.__('Create a skill')}
          onClick={() => setView({ kind: 'edit', skill: null })}
        />
      }
    >
      <div className="jp-SacRow">
        <input
          className="jp-mod-styled jp-SacSearch"
          type="search"
          aria-label={trans.__('Search skills')}
          placeholder={trans.__('Search skills')}
          value={query}
          onChange={e => setQuery(e.target.value)}
        />
        <select
          className="jp-mod-styled"
          aria-label={trans.__('Tier')}
          value={tier}
          onChange={e => setTier(e.target.value)}
        >
          {TIERS.map(t => (
            <option key={t} value={t}>
              {t === ''
                ? trans.__('all tiers')
                : t === 'installed'
                  ? trans.__('installed here')
                  : t}
            </option>
          ))}
        </select>
      </div>
      <ErrorLine error={error} />
      <ul className="jp-SacList jp-SacSkills">
        {skills.map(s => {
          // What this agent has: the pinned version, which may be older than the
          // marketplace's `s`; runs use its parameters.
          const here: (IInstalledSkill & Record<string, any>) | undefined =
            installed.get(s.id);
          const isInstalled = here !== undefined;
          const offer = updateOffer(here);
          const mine = s.owner === ctx.agent.user;
          return (
            <li key={s.id} className="jp-SacSkill" data-command={s.command}>
              <div className="jp-SacSkill-head">
                <strong title={s.description}>{s.title || s.command}</strong>
                <span className={`jp-SacTier jp-mod-${s.visibility}`}>
                  {s.visibility}
                </span>
              </div>
              <div className="jp-SacMuted">
                /{s.command} ·{' '}
                <span className="jp-SacSkill-version">
                  {here
                    ? trans.__('v%1 installed', here.installed_version)
                    : `v${s.version}`}
                </span>{' '}
                · {trans._n('%1 install', '%1 installs', s.installs ?? 0)}
                {s.owner ? ` · ${s.owner}` : ''}
              </div>
              <div className="jp-SacRow">
                {isInstalled ? (
                  <>
                    <SmallButton
                      label={trans.__('Run')}
                      kind="accept"
                      onClick={() => setView({ kind: 'run', skill: here })}
                    />
                    {offer !== null ? (
                      <SmallButton
                        label={trans.__('Update to v%1', offer)}
                        disabled={working === s.id}
                        onClick={() =>
                          void act(
                            s,
                            () => ctx.service.updateInstall(s.id, offer),
                            true
                          )
                        }
                      />
                    ) : null}
                    <SmallButton
                      label={trans.__('Uninstall')}
                      disabled={working === s.id}
                      onClick={() =>
                        void act(s, () => ctx.service.uninstall(s.id), true)
                      }
                    />
                  </>
                ) : (
                  <SmallButton
                    label={trans.__('Install')}
                    disabled={working === s.id}
                    onClick={() => void act(s, () => ctx.service.install(s.id), true)}
                  />
                )}
                <SmallButton
                  label={trans.__('Fork')}
                  disabled={working === s.id}
                  onClick={() => void act(s, () => ctx.service.forkSkill(s.id))}
                />
                {mine && s.visibility === 'private' ? (
                  <SmallButton
                    label={trans.__('Edit')}
                    disabled={working === s.id}
                    onClick={() => void edit(s)}
                  />
                ) : null}
                {mine ? (
                  // Sharing, and changing what others installed, is a person's act on
                  // the service's own page, out of reach of this page's scripts.
                  <SmallButton
                    label={
                      s.visibility === 'private'
                        ? trans.__('Share…')
                        : trans.__('Manage…')
                    }
                    title={trans.__('Open this skill on the SAC service')}
                    onClick={() =>
                      ctx.openServicePage(`skills/${encodeURIComponent(String(s.id))}`)
                    }
                  />
                ) : null}
              </div>
            </li>
          );
        })}
      </ul>
      {!skills.length && !error ? (
        <p className="jp-SacMuted">{trans.__('No skills match.')}</p>
      ) : null}
      {cursor ? (
        <SmallButton label={trans.__('More')} onClick={() => void load(cursor)} />
      ) : null}
    </Section>
  );
}
