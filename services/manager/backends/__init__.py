"""Backend plug-ins: how a manager realises workspaces on its host.

    base.py      the Backend interface every plug-in implements
    loader.py    builds the plug-ins the settings ask for (one package per kind's plug_in trait)
    router.py    KindRouter: one manager, several plug-ins
    account/     UNIX_ACCOUNT: an account per workspace, made or leased from a pool
    sandbox/     SANDBOX: an account whose programs run in namespaces of their own
    vm/          VIRTUAL_MACHINE: a libvirt domain booting a catalogue image
    host/        what several share: cgroups, disk images, shaped network links"""
