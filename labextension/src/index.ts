/**
 * jupyter-sac's JupyterLab extension: the SAC sidebar, the Claude terminal
 * command and launcher item, and the chat panel, for the agent this JupyterLab
 * belongs to (a JupyterHub named server).
 */

import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, MainAreaWidget, Notification } from '@jupyterlab/apputils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { ILauncher } from '@jupyterlab/launcher';
import { IRenderMimeRegistry } from '@jupyterlab/rendermime';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { ITranslator, nullTranslator } from '@jupyterlab/translation';
import { PageConfig } from '@jupyterlab/coreutils';
import { LabIcon } from '@jupyterlab/ui-components';

import claudeSvg from '../style/icons/claude.svg';
import { currentAgent, ExtensionClient, SacError, ServiceClient } from './api';
import { addArchiveCommands } from './archives';
import { ChatPanel } from './chat';
import {
  COMMANDS,
  DEFAULT_PREFERENCES,
  IPreferences,
  ISacContext,
  SacEvents
} from './context';
import { agentOpenUrl, serviceBase, servicePageUrl } from './logic';
import { SacSidebar } from './sidebar';

const PLUGIN_ID = 'jupyter-sac:plugin';

export const claudeIcon = new LabIcon({
  name: 'jupyter-sac:claude',
  svgstr: claudeSvg
});

/** Key of "this browser has opened this agent before" in local storage. */
function openedKey(user: string, slug: string): string {
  return `jupyter-sac:opened:${user}/${slug}`;
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description: 'The SAC sidebar, Claude terminal and chat panel.',
  autoStart: true,
  optional: [
    ICommandPalette,
    ILauncher,
    ILayoutRestorer,
    IRenderMimeRegistry,
    ISettingRegistry,
    ITranslator,
    IFileBrowserFactory
  ],
  activate: async (
    app: JupyterFrontEnd,
    palette: ICommandPalette | null,
    launcher: ILauncher | null,
    restorer: ILayoutRestorer | null,
    rendermime: IRenderMimeRegistry | null,
    settingRegistry: ISettingRegistry | null,
    translator: ITranslator | null,
    fileBrowsers: IFileBrowserFactory | null
  ) => {
    const trans = (translator ?? nullTranslator).load('jupyter_sac');
    const agent = currentAgent();
    if (!agent.user || !agent.slug) {
      // Not an agent's JupyterLab (no hub user or named server): nothing to show.
      console.info('jupyter-sac: not running in a SAC agent; the sidebar is off');
      return;
    }

    let preferences: IPreferences = { ...DEFAULT_PREFERENCES };
    if (settingRegistry) {
      try {
        const settings = await settingRegistry.load(PLUGIN_ID);
        const read = () => {
          preferences = {
            ...DEFAULT_PREFERENCES,
            ...(settings.composite as Partial<IPreferences>)
          };
        };
        read();
        settings.changed.connect(read);
      } catch (reason) {
        console.warn('jupyter-sac: settings could not be loaded', reason);
      }
    }

    const events = new SacEvents();
    app.serviceManager.events.stream.connect((_, event) =>
      events.dispatch(event as any)
    );

    const ext = new ExtensionClient();
    // The service's public URL (its own origin) comes from this sandbox's status.
    let serviceUrl: string | null = null;
    void ext
      .status()
      .then(status => {
        serviceUrl =
          typeof status?.service_url === 'string' ? status.service_url : null;
      })
      .catch(reason =>
        console.warn('jupyter-sac: the service address is unknown', reason)
      );

    const ctx: ISacContext = {
      app,
      agent,
      ext,
      service: new ServiceClient(agent, ext),
      events,
      trans,
      rendermime,
      preferences: () => preferences,
      showFolder: async (path: string) => {
        await app.commands.execute('filebrowser:go-to-path', { path: `/${path}` });
      },
      openServicePage: (path: string) => {
        // The sandbox's status says where the service is; until it has answered,
        // JupyterHub's own layout does (sac--service.<hub host>, or /services/sac/).
        const base = serviceUrl ?? serviceBase(agent.hubPrefix, agent.hubHost);
        window.open(servicePageUrl(base, path), '_blank', 'noopener');
      }
    };

    // ---- sidebar
    const sidebar = new SacSidebar(ctx);
    sidebar.title.icon = claudeIcon;
    app.shell.add(sidebar, 'left', { rank: 150 });
    restorer?.add(sidebar, 'jupyter-sac-sidebar');

    // ---- Claude terminal: always the agent's one `claude` terminal, never a copy
    app.commands.addCommand(COMMANDS.terminal, {
      label: trans.__('Claude Terminal'),
      caption: trans.__("Open this agent's Claude Code terminal"),
      icon: claudeIcon,
      execute: async () => {
        try {
          const { name } = await ctx.ext.ensureTerminal();
          return await app.commands.execute('terminal:open', {
            name: name || 'claude'
          });
        } catch (reason) {
          Notification.error(
            trans.__('The Claude terminal could not start: %1', String(reason))
          );
        }
      }
    });

    // ---- chat panel: one per JupyterLab, switching between conversations
    let chat: MainAreaWidget<ChatPanel> | null = null;
    app.commands.addCommand(COMMANDS.chat, {
      label: trans.__('Claude Chat'),
      caption: trans.__('Chat with this agent: answers, tool timeline, todo list'),
      icon: claudeIcon,
      execute: args => {
        const sessionId = (args.sessionId as string) || null;
        if (!chat || chat.isDisposed) {
          chat = new MainAreaWidget({ content: new ChatPanel(ctx, sessionId) });
          chat.id = 'jp-sac-chat-panel';
          chat.title.label = trans.__('Claude Chat');
          chat.title.icon = claudeIcon;
          app.shell.add(chat, 'main');
        } else if (sessionId && chat.content.sessionId !== sessionId) {
          events.startedSession(sessionId);
        }
        app.shell.activateById(chat.id);
      }
    });

    app.commands.addCommand(COMMANDS.toggle, {
      label: trans.__('Toggle Claude Chat / Terminal'),
      caption: trans.__('Switch between chat and the terminal for this agent'),
      execute: () => {
        const current = app.shell.currentWidget;
        const inChat = Boolean(chat && current && current.id === chat.id);
        return app.commands.execute(inChat ? COMMANDS.terminal : COMMANDS.chat);
      }
    });

    app.commands.addCommand(COMMANDS.sidebar, {
      label: trans.__('Show the SAC Sidebar'),
      execute: () => app.shell.activateById(sidebar.id)
    });

    app.commands.addCommand(COMMANDS.restart, {
      label: trans.__('Restart This Agent'),
      execute: async () => {
        try {
          await ctx.service.restart();
        } catch (reason) {
          // The request goes through this agent's own server, which the restart
          // stops: its answer may be lost with it (a 5xx from the proxy, or no
          // answer). Only a refusal (4xx) means the restart did not happen.
          if (
            reason instanceof SacError &&
            reason.status >= 400 &&
            reason.status < 500
          ) {
            throw reason;
          }
        }
        Notification.info(trans.__('%1 is restarting.', agent.slug), {
          autoClose: 5000
        });
        // This page belongs to the server that just stopped (its login too): go by
        // the hub's spawn page, which shows the start and then reopens JupyterLab.
        window.location.assign(
          agentOpenUrl(agent.hubHost, agent.hubPrefix, agent.user, agent.slug)
        );
      }
    });

    // ---- workspace folders as ZIPs, from the file browser's context menu
    if (fileBrowsers) {
      addArchiveCommands(app, ext, trans, fileBrowsers);
    }

    const category = trans.__('SAC');
    for (const command of [
      COMMANDS.terminal,
      COMMANDS.chat,
      COMMANDS.toggle,
      COMMANDS.sidebar,
      COMMANDS.restart
    ]) {
      palette?.addItem({ command, category });
    }
    launcher?.add({ command: COMMANDS.terminal, category: trans.__('Agent'), rank: 0 });
    launcher?.add({ command: COMMANDS.chat, category: trans.__('Agent'), rank: 1 });

    // ---- the first time this browser opens the agent, its terminal opens (not when
    // the page was opened on a document, /lab/tree/<path>: that one is what the
    // person asked for; the terminal waits for the next plain load)
    void app.restored.then(async () => {
      const key = openedKey(agent.user, agent.slug);
      if (
        !preferences.openTerminalOnFirstLoad ||
        window.localStorage.getItem(key) ||
        PageConfig.getOption('treePath')
      ) {
        return;
      }
      window.localStorage.setItem(key, new Date().toISOString());
      await app.commands.execute(COMMANDS.terminal);
    });
  }
};

export default plugin;
