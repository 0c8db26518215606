#
# Cookbook:: backup_agent
# Recipe:: install
#
# A venv with the agent this cookbook carries. No index is ever asked for `backup-agent`: the
# wheel is the cookbook's own file (files/agent), installed with --no-index --no-deps. Its
# dependencies come from the operator's index or wheel mirror (install.index_url / find_links),
# exactly the versions and sha256 of files/agent/requirements.lock (--require-hashes), so
# nodes neither drift nor take whatever someone published under a name; the agent's extras
# (install.extras) likewise from files/agent/requirements-EXTRA.lock.
#
# pip runs only when the wheel, the lock or the pip settings differ from the last successful
# install (recorded in a marker file), so a converge with nothing new calls no pip. A venv made
# with another Python than install.python is made again from scratch.

# Resource blocks run with the resource as self: the cookbook's helpers (recipe DSL only) are
# reached through `helpers`.
helpers = self

install = node['backup_agent']['install']
# At compile time: a version the cookbook does not carry stops the run before anything changes.
wheel_sha256 = backup_agent_wheel_sha256
backup_agent_check_extras!
# Chef prints a failed resource's properties (the environment with the URLs) and pip's output.
sensitive_install = backup_agent_pip_credentials?

package install['packages']

# --clear: a venv of another Python keeps that Python's site-packages, which the new one
# cannot use; the marker goes with it, so everything below runs again.
execute 'create backup-agent venv' do
  command [install['python'], '-m', 'venv', '--clear', install['dir']]
  not_if { helpers.backup_agent_venv_current? }
end

directory backup_agent_dist_dir do
  owner 'root'
  group 'root'
  mode '0755'
end

# `checksum`: Chef refuses to put anything else there than the cookbook's file.
cookbook_file backup_agent_wheel_path do
  source "agent/#{helpers.backup_agent_wheel_name}"
  checksum wheel_sha256
  owner 'root'
  group 'root'
  mode '0644'
  backup false
end

unless install['lock_file']
  cookbook_file backup_agent_lock_path do
    source 'agent/requirements.lock'
    checksum helpers.backup_agent_lock_sha256
    owner 'root'
    group 'root'
    mode '0644'
    backup false
  end

  # What each extra (install.extras, e.g. chunking: numpy) adds, installed with the lock above.
  backup_agent_extras.each do |extra|
    cookbook_file backup_agent_extra_lock_path(extra) do
      source "agent/requirements-#{extra}.lock"
      checksum helpers.backup_agent_extra_lock_sha256(extra)
      owner 'root'
      group 'root'
      mode '0644'
      backup false
    end
  end
end

execute 'install backup-agent dependencies' do
  command helpers.backup_agent_deps_command
  environment helpers.backup_agent_pip_env
  sensitive sensitive_install
  not_if { helpers.backup_agent_installed? }
end

execute 'install backup-agent' do
  command helpers.backup_agent_pip_command
  sensitive sensitive_install
  not_if { helpers.backup_agent_installed? }
end

# Written only after pip succeeded, so a failed install is retried on the next run. Lazy: an
# operator's lock_file may be written by a wrapper in this very run.
file backup_agent_install_marker do
  content(lazy { helpers.backup_agent_install_fingerprint })
  owner 'root'
  group 'root'
  mode '0644'
end

# nil or false: no link (the agent stays at its venv path). A link elsewhere than
# /usr/local/bin gets its directory: a missing one used to fail the converge at this step.
if install['bin_link']
  directory ::File.dirname(install['bin_link']) do
    recursive true
  end

  link install['bin_link'] do
    to helpers.backup_agent_bin
  end
end
