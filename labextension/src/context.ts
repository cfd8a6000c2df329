/** What every SAC widget shares: the two clients, live events, strings, settings. */

import { JupyterFrontEnd } from '@jupyterlab/application';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { TranslationBundle } from '@jupyterlab/translation';
import { ISignal, Signal } from '@lumino/signaling';

import { ExtensionClient, IAgentRef, ServiceClient } from './api';
import { IHitlRequest, IOutputEvent } from './logic';

export const HITL_SCHEMA = 'https://events.jupyter-sac.org/hitl';
export const OUTPUT_SCHEMA = 'https://events.jupyter-sac.org/workspace/output/v1';

export interface IPreferences {
  openTerminalOnFirstLoad: boolean;
  enterSends: boolean;
  historyPageSize: number;
  notifyApprovals: boolean;
}

export const DEFAULT_PREFERENCES: IPreferences = {
  openTerminalOnFirstLoad: true,
  enterSends: true,
  historyPageSize: 20,
  notifyApprovals: true
};

/** Live happenings in this agent, from JupyterLab's event bus (jupyter_events). */
export class SacEvents {
  private _hitl = new Signal<this, { action: string; request: IHitlRequest }>(this);
  private _output = new Signal<this, IOutputEvent>(this);
  private _sessionStarted = new Signal<this, string>(this);
  private _turnEnded = new Signal<this, string>(this);

  get hitl(): ISignal<this, { action: string; request: IHitlRequest }> {
    return this._hitl;
  }
  get output(): ISignal<this, IOutputEvent> {
    return this._output;
  }
  /** A chat session was started from the sidebar (a skill run): the chat shows it. */
  get sessionStarted(): ISignal<this, string> {
    return this._sessionStarted;
  }

  /** A chat turn ended (its model calls are metered: usage moved). */
  get turnEnded(): ISignal<this, string> {
    return this._turnEnded;
  }

  endedTurn(sessionId: string): void {
    this._turnEnded.emit(sessionId);
  }

  /** Route one event of the server's event stream. */
  dispatch(event: { schema_id?: string; [key: string]: unknown }): void {
    if (event.schema_id === HITL_SCHEMA && event.request) {
      this._hitl.emit({
        action: String(event.action),
        request: event.request as IHitlRequest
      });
    } else if (event.schema_id === OUTPUT_SCHEMA && typeof event.path === 'string') {
      this._output.emit({
        action: String(event.action),
        path: event.path,
        size: typeof event.size === 'number' ? event.size : null
      });
    }
  }

  startedSession(sessionId: string): void {
    this._sessionStarted.emit(sessionId);
  }
}

export interface ISacContext {
  app: JupyterFrontEnd;
  agent: IAgentRef;
  ext: ExtensionClient;
  service: ServiceClient;
  events: SacEvents;
  trans: TranslationBundle;
  rendermime: IRenderMimeRegistry | null;
  preferences: () => IPreferences;
  /** Open a folder of the workspace in the file browser. */
  showFolder: (path: string) => Promise<void>;
  /**
   * Open one of the `sac` service's pages (`approvals/<id>`, `agents/<u>/<a>`,
   * `skills/<id>`) in a new window, on the service's own origin: where a person
   * decides, changes settings and keys, and shares skills with their own login,
   * out of reach of this page's scripts.
   */
  openServicePage: (path: string) => void;
}

export const COMMANDS = {
  terminal: 'sac:claude-terminal',
  chat: 'sac:open-chat',
  toggle: 'sac:toggle-chat-terminal',
  restart: 'sac:restart-agent',
  sidebar: 'sac:show-sidebar'
};
