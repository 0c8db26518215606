require_relative '../../spec_helper'
require 'tmpdir'

describe BackupAgentCookbook::Helpers do
  let(:install_dir) { Dir.mktmpdir('backup-agent-spec') }
  let(:install) do
    { 'dir' => install_dir, 'version' => '0.1.0', 'python' => '/usr/bin/python3', 'index_url' => nil,
      'find_links' => ['/srv/wheels'], 'no_index' => true, 'pip_extra_args' => [] }
  end
  let(:helper) do
    attrs = { 'backup_agent' => { 'install' => install, 'config' => { 'path' => '/etc/backup-agent/config.yaml' } } }
    Class.new do
      include BackupAgentCookbook::Helpers
      define_method(:node) { attrs }
    end.new
  end

  after { FileUtils.rm_rf(install_dir) }

  def fake_agent(script)
    FileUtils.mkdir_p(File.join(install_dir, 'bin'))
    File.write(File.join(install_dir, 'bin', 'backup-agent'), "#!/bin/sh\n#{script}\n")
    File.chmod(0o755, File.join(install_dir, 'bin', 'backup-agent'))
  end

  describe '#backup_agent_installed?' do
    before { fake_agent('exit 0') }

    it 'is true only when the marker records this version and these pip settings' do
      expect(helper.backup_agent_installed?).to be false
      File.write(helper.backup_agent_install_marker, helper.backup_agent_install_fingerprint)
      expect(helper.backup_agent_installed?).to be true
      install['find_links'] = ['/srv/other']
      expect(helper.backup_agent_installed?).to be false
      install['find_links'] = ['/srv/wheels']
      install['version'] = '0.2.0'
      expect(helper.backup_agent_installed?).to be false
    end
  end

  describe '#backup_agent_validate_config' do
    it 'accepts anything before the agent is installed' do
      expect(helper.backup_agent_validate_config('/nonexistent')).to be true
    end

    it 'accepts a config the agent validates' do
      fake_agent('echo ok')
      expect(helper.backup_agent_validate_config('/tmp/x.yaml')).to be true
    end

    it "raises with the agent's one-line reason when it rejects the config" do
      fake_agent('echo "a log line" >&2; echo "$2: jobs.etc.bogus: unknown key" >&2; echo ... >&2; exit 2')
      expect { helper.backup_agent_validate_config('/tmp/x.yaml') }.to raise_error(
        BackupAgentCookbook::ConfigError,
        'backup_agent: `backup-agent validate` rejected the new /etc/backup-agent/config.yaml, which is left ' \
        'unchanged: /tmp/x.yaml: jobs.etc.bogus: unknown key'
      )
    end
  end
end
