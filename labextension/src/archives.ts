/**
 * Workspace folders as ZIP archives from JupyterLab's file browser: "Download as
 * ZIP" on a folder (the sandbox streams it: `GET sac/api/workspace/archive`), and
 * "Upload ZIP here…" on a folder or the listing (unpacked by the sandbox after its
 * checks: `POST sac/api/workspace/archive`). The file browser's root is the
 * workspace, so its paths are workspace paths.
 */

import { JupyterFrontEnd } from '@jupyterlab/application';
import { Dialog, Notification, showDialog } from '@jupyterlab/apputils';
import { IFileBrowserFactory } from '@jupyterlab/filebrowser';
import { TranslationBundle } from '@jupyterlab/translation';

import { ExtensionClient, SacError } from './api';
import { archiveName } from './logic';

export const ARCHIVE_COMMANDS = {
  download: 'sac:download-folder-zip',
  upload: 'sac:upload-zip'
};

/** Start a browser download of ``url`` named ``name`` (the server's answer is an
 * attachment; the page's cookies are its login). */
export function startDownload(url: string, name: string): void {
  const link = document.createElement('a');
  link.href = url;
  link.download = name;
  link.rel = 'noopener';
  document.body.appendChild(link);
  link.click();
  link.remove();
}

/** Ask for a .zip file; null if the person cancels. */
function chooseZip(): Promise<File | null> {
  return new Promise(resolve => {
    const input = document.createElement('input');
    input.type = 'file';
    input.accept = '.zip,application/zip';
    input.addEventListener('change', () => resolve(input.files?.[0] ?? null));
    input.addEventListener('cancel', () => resolve(null));
    input.click();
  });
}

export async function uploadZip(
  ext: ExtensionClient,
  trans: TranslationBundle,
  folder: string,
  file: Blob
): Promise<any | null> {
  try {
    return await ext.uploadArchive(folder, file, false);
  } catch (reason) {
    if (!(reason instanceof SacError) || reason.code !== 'conflict') {
      throw reason;
    }
    const answer = await showDialog({
      title: trans.__('Replace files?'),
      body: reason.message,
      buttons: [
        Dialog.cancelButton({ label: trans.__('Keep mine') }),
        Dialog.warnButton({ label: trans.__('Replace') })
      ]
    });
    if (!answer.button.accept) {
      return null;
    }
    return await ext.uploadArchive(folder, file, true);
  }
}

export function addArchiveCommands(
  app: JupyterFrontEnd,
  ext: ExtensionClient,
  trans: TranslationBundle,
  factory: IFileBrowserFactory
): void {
  const selectedFolder = (): string | null => {
    const browser = factory.tracker.currentWidget;
    if (!browser) {
      return null;
    }
    for (const item of browser.selectedItems()) {
      if (item.type === 'directory') {
        return item.path;
      }
    }
    return null;
  };
  // The folder right-clicked, else the one the listing shows (a right-click on the
  // listing's background leaves the earlier selection as it was).
  const targetFolder = (): string => {
    const item = app.contextMenuHitTest(node =>
      node.classList.contains('jp-DirListing-item')
    );
    const folder = item?.dataset.isdir === 'true' ? selectedFolder() : null;
    return folder ?? factory.tracker.currentWidget?.model.path ?? '';
  };

  app.commands.addCommand(ARCHIVE_COMMANDS.download, {
    label: trans.__('Download as ZIP'),
    caption: trans.__('Download this folder as one ZIP file'),
    isVisible: () => selectedFolder() !== null,
    execute: () => {
      const folder = selectedFolder();
      if (folder !== null) {
        startDownload(ext.archiveUrl(folder), archiveName(folder));
      }
    }
  });

  app.commands.addCommand(ARCHIVE_COMMANDS.upload, {
    label: trans.__('Upload ZIP Here…'),
    caption: trans.__('Unpack a ZIP file into this folder'),
    execute: async () => {
      const folder = targetFolder();
      const file = await chooseZip();
      if (!file) {
        return;
      }
      try {
        const result = await uploadZip(ext, trans, folder, file);
        if (result) {
          Notification.success(
            trans.__('%1 files unpacked into %2', result.files.length, folder || '/'),
            { autoClose: 5000 }
          );
        }
      } catch (reason) {
        Notification.error(
          trans.__('The ZIP was not unpacked: %1', (reason as Error).message),
          { autoClose: false }
        );
      }
      await factory.tracker.currentWidget?.model.refresh();
    }
  });

  app.contextMenu.addItem({
    command: ARCHIVE_COMMANDS.download,
    selector: '.jp-DirListing-item[data-isdir="true"]',
    rank: 9
  });
  app.contextMenu.addItem({
    command: ARCHIVE_COMMANDS.upload,
    selector: '.jp-DirListing-content',
    rank: 9
  });
}
