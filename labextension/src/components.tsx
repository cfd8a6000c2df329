/** Small React pieces the SAC widgets share. */

import { IRenderMimeRegistry, MimeModel } from '@jupyterlab/rendermime';
import { TranslationBundle } from '@jupyterlab/translation';
import { caretDownIcon, caretRightIcon } from '@jupyterlab/ui-components';
import * as React from 'react';

import { formatBytes, quotaLevel, quotaPercent } from './logic';

/** A collapsible section of the sidebar with a heading and optional actions. */
export function Section(props: {
  id: string;
  title: string;
  badge?: number;
  actions?: React.ReactNode;
  defaultOpen?: boolean;
  children: React.ReactNode;
}): JSX.Element {
  const [open, setOpen] = React.useState(props.defaultOpen ?? true);
  const Caret = open ? caretDownIcon : caretRightIcon;
  return (
    <section className="jp-SacSection" data-section={props.id} aria-label={props.title}>
      <header className="jp-SacSection-header">
        <button
          className="jp-SacSection-toggle"
          aria-expanded={open}
          onClick={() => setOpen(!open)}
        >
          <Caret.react tag="span" className="jp-SacSection-caret" />
          <span className="jp-SacSection-title">{props.title}</span>
          {props.badge ? (
            <span className="jp-SacBadge" aria-label={`${props.badge} pending`}>
              {props.badge}
            </span>
          ) : null}
        </button>
        <span className="jp-SacSection-actions">{props.actions}</span>
      </header>
      {open ? <div className="jp-SacSection-body">{props.children}</div> : null}
    </section>
  );
}

export function ErrorLine(props: { error: unknown }): JSX.Element | null {
  if (!props.error) {
    return null;
  }
  const message =
    props.error instanceof Error ? props.error.message : String(props.error);
  return (
    <div className="jp-SacError" role="alert">
      {message}
    </div>
  );
}

export function SmallButton(props: {
  label: string;
  onClick: () => void;
  title?: string;
  kind?: 'accept' | 'warn' | 'reject' | 'plain';
  disabled?: boolean;
}): JSX.Element {
  return (
    <button
      className={`jp-Button jp-mod-styled jp-SacButton jp-mod-${props.kind ?? 'plain'}`}
      title={props.title ?? props.label}
      aria-label={props.title ?? props.label}
      disabled={props.disabled}
      onClick={props.onClick}
    >
      {props.label}
    </button>
  );
}

/** The end of a form: its error, the submit button and Cancel. */
export function FormFooter(props: {
  trans: TranslationBundle;
  error: unknown;
  submitLabel: string;
  busy: boolean;
  onCancel: () => void;
}): JSX.Element {
  return (
    <>
      <ErrorLine error={props.error} />
      <div className="jp-SacRow">
        <button
          type="submit"
          className="jp-Button jp-mod-styled jp-SacButton jp-mod-accept"
          disabled={props.busy}
        >
          {props.submitLabel}
        </button>
        <SmallButton label={props.trans.__('Cancel')} onClick={props.onCancel} />
      </div>
    </>
  );
}

/** A usage bar: used of limit, coloured as it fills. */
export function UsageBar(props: {
  label: string;
  used: number;
  limit: number | null | undefined;
  bytes?: boolean;
}): JSX.Element {
  const percent = quotaPercent(props.used, props.limit);
  const fmt = (n: number | null | undefined) =>
    props.bytes ? formatBytes(n) : n === null || n === undefined ? '—' : String(n);
  return (
    <div className="jp-SacUsage" title={`${percent}%`}>
      <div className="jp-SacUsage-label">
        <span>{props.label}</span>
        <span>
          {fmt(props.used)} / {props.limit ? fmt(props.limit) : '∞'}
        </span>
      </div>
      <div
        className="jp-SacUsage-track"
        role="progressbar"
        aria-label={props.label}
        aria-valuemin={0}
        aria-valuemax={100}
        aria-valuenow={percent}
      >
        <div
          className={`jp-SacUsage-fill jp-mod-${quotaLevel(percent)}`}
          style={{ width: `${percent}%` }}
        />
      </div>
    </div>
  );
}

/** Markdown rendered by JupyterLab's own renderer (sanitised, themed); plain text without it. */
export function Markdown(props: {
  text: string;
  rendermime: IRenderMimeRegistry | null;
}): JSX.Element {
  const host = React.useRef<HTMLDivElement>(null);
  React.useEffect(() => {
    const node = host.current;
    if (!node || !props.rendermime) {
      return;
    }
    const renderer = props.rendermime.createRenderer('text/markdown');
    const model = new MimeModel({ data: { 'text/markdown': props.text } });
    let disposed = false;
    void renderer.renderModel(model).then(() => {
      if (!disposed) {
        node.replaceChildren(renderer.node);
      }
    });
    return () => {
      disposed = true;
      renderer.dispose();
    };
  }, [props.text, props.rendermime]);
  if (!props.rendermime) {
    return <div className="jp-SacPlain">{props.text}</div>;
  }
  return <div className="jp-SacMarkdown" ref={host} />;
}

/** State of a value loaded once (and again on `reload`). */
export function useLoad<T>(
  load: () => Promise<T>,
  deps: React.DependencyList
): { value: T | null; error: unknown; loading: boolean; reload: () => void } {
  const [value, setValue] = React.useState<T | null>(null);
  const [error, setError] = React.useState<unknown>(null);
  const [loading, setLoading] = React.useState(true);
  const [tick, setTick] = React.useState(0);
  React.useEffect(() => {
    let live = true;
    setLoading(true);
    load().then(
      v => {
        if (live) {
          setValue(v);
          setError(null);
          setLoading(false);
        }
      },
      e => {
        if (live) {
          setError(e);
          setLoading(false);
        }
      }
    );
    return () => {
      live = false;
    };
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [...deps, tick]);
  return { value, error, loading, reload: () => setTick(t => t + 1) };
}
